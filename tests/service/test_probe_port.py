"""A started process whose port another program took: neither the card that program
serves nor a registration of that port brings the workspace online (the provisioner says
the agent's process does not listen there); once the agent's own process does, they do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from berth.adapters.memory_bus import MemoryBus, MemoryCache, MemoryLocks
from berth.adapters.memory_store import MemoryStore
from berth.bootstrap import Container, assemble
from berth.domain.errors import Conflict
from berth.domain.workspace import Workspace
from berth.ports import AgentReply, RunInfo
from berth.settings import Settings
from tests.service.fakes import ADMIN, FakeAgents, FakeRuntime

CARD = b'{"name": "someone", "version": "1", "supportedInterfaces": [], "skills": []}'


class CardServer(FakeAgents):
    """Whatever listens at an agent URL answers with a card (and never registers)."""

    async def get(self, url: str, headers: dict[str, str], timeout: float) -> AgentReply:
        if url.endswith("/.well-known/agent-card.json"):
            return AgentReply(200, CARD)
        return await super().get(url, headers, timeout)


class Unregistered(FakeRuntime):
    """Starts an agent that is found only by its card; `ours` is what `serves` says."""

    ours: bool | None = False

    async def start(self, ws: Workspace, identity: dict[str, str]) -> RunInfo:
        n = self.starts[ws.id] = self.starts.get(ws.id, 0) + 1
        return RunInfo(url=f"http://127.0.0.1:{40000 + n}", pid=n)

    async def is_running(self, ws: Workspace) -> bool:
        return True

    async def serves(self, ws: Workspace, url: str) -> bool | None:
        return self.ours


def _berth(agents: FakeAgents, runtime: FakeRuntime) -> Container:
    options: dict[str, Any] = {
        "heartbeat_seconds": 0.1,
        "heartbeat_timeout": 60.0,
        "start_timeout": 10.0,
        "stop_grace_seconds": 0.1,
        "data_dir": "/nonexistent-berth-service-test",
    }
    return assemble(
        Settings(**options),
        store=MemoryStore(),
        shared=(MemoryCache(), MemoryLocks(), MemoryBus()),
        client=agents,
        provisioners={"process": runtime},
        admin=ADMIN,
        sole=True,
    )


async def test_a_card_from_a_program_that_took_the_agent_s_port_does_not_bring_it_online() -> None:
    agents = CardServer()
    runtime = Unregistered(agents)
    c = _berth(agents, runtime)
    await c.start()
    try:
        ws, _ = await c.workspaces.create({"name": "p", "command": ["agent"]})
        await asyncio.sleep(1.0)  # ten probes, each answered with a card
        assert (await c.roster.get(ws.id)).state.value == "provisioning"
        runtime.ours = True  # the agent's own process listens there now
        assert await c.roster.wait_for(
            ws.id, lambda w: w is not None and w.state.value == "online", 3
        )
        online = await c.roster.get(ws.id)
        assert online.agent_card is not None and online.agent_card["name"] == "someone"
    finally:
        await c.stop()


class Registering(Unregistered):
    """Keeps the run credential of each start, for the agent's registration."""

    running = True

    def __init__(self, agents: FakeAgents) -> None:
        super().__init__(agents)
        self.tokens: dict[str, str] = {}

    async def start(self, ws: Workspace, identity: dict[str, str]) -> RunInfo:
        self.tokens[ws.id] = identity["BERTH_WORKSPACE_TOKEN"]
        return await super().start(ws, identity)

    async def is_running(self, ws: Workspace) -> bool:
        return self.running


@asynccontextmanager
async def _registering() -> AsyncIterator[tuple[Container, Registering, Workspace]]:
    """berth with a process workspace started (its run credential in `runtime.tokens`)."""
    agents = FakeAgents()
    runtime = Registering(agents)
    c = _berth(agents, runtime)
    await c.start()
    try:
        ws, _ = await c.workspaces.create({"name": "p", "command": ["agent"]})
        assert await c.roster.wait_for(
            ws.id, lambda w: w is not None and ws.id in runtime.tokens, 3
        )
        yield c, runtime, ws
    finally:
        await c.stop()


async def test_a_registration_of_a_port_another_program_serves_is_refused() -> None:
    """An agent that sees its port accept connections may register before its own bind
    fails, when another program took the port: berth refuses that registration (409
    `not_the_agent`) and the workspace stays starting; the same registration counts once
    the agent's own process listens there, or where this berth did not start the agent
    (another replica's: its provisioner here cannot tell)."""
    async with _registering() as (c, runtime, ws):
        token, url = runtime.tokens[ws.id], "http://127.0.0.1:40001"
        with pytest.raises(Conflict) as refused:
            await c.registry.register(token, {"url": url})
        assert refused.value.code == "not_the_agent" and url in str(refused.value)
        assert (await c.roster.get(ws.id)).state.value == "provisioning"

        runtime.ours = None  # cannot tell (another user's processes, not Linux): it counts
        await c.registry.register(token, {"url": url})
        assert (await c.roster.get(ws.id)).state.value == "online"


async def test_a_registration_counts_where_this_berth_did_not_start_the_agent() -> None:
    async with _registering() as (c, runtime, ws):
        runtime.running = False  # no process of it here: `serves` says False, and is not asked
        await c.registry.register(runtime.tokens[ws.id], {"url": "http://127.0.0.1:40001"})
        assert (await c.roster.get(ws.id)).state.value == "online"


async def test_a_registration_counts_on_a_replica_without_the_workspace_s_runtime() -> None:
    """A replica that cannot run the workspace's runtime cannot tell who listens there:
    the registration counts (it must not answer 422 runtime_unavailable)."""
    async with _registering() as (c, runtime, ws):
        provisioners = c.runner.provisioners
        runtime_here = provisioners.pop(ws.runtime.value)
        try:
            await c.registry.register(runtime.tokens[ws.id], {"url": "http://127.0.0.1:40001"})
        finally:
            provisioners[ws.runtime.value] = runtime_here
        assert (await c.roster.get(ws.id)).state.value == "online"
