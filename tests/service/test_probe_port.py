"""A started process whose port another program took: the card that program serves does
not bring the workspace online (the provisioner says the agent's process does not listen
there); once the agent's own process does, the same card does."""

from __future__ import annotations

import asyncio
from typing import Any

from berth.adapters.memory_bus import MemoryBus, MemoryCache, MemoryLocks
from berth.adapters.memory_store import MemoryStore
from berth.bootstrap import assemble
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


async def test_a_card_from_a_program_that_took_the_agent_s_port_does_not_bring_it_online() -> None:
    agents = CardServer()
    runtime = Unregistered(agents)
    options: dict[str, Any] = {
        "heartbeat_seconds": 0.1,
        "heartbeat_timeout": 60.0,
        "start_timeout": 10.0,
        "stop_grace_seconds": 0.1,
        "data_dir": "/nonexistent-berth-service-test",
    }
    c = assemble(
        Settings(**options),
        store=MemoryStore(),
        shared=(MemoryCache(), MemoryLocks(), MemoryBus()),
        client=agents,
        provisioners={"process": runtime},
        admin=ADMIN,
        sole=True,
    )
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
