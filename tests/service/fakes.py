"""In-process stand-ins for the two things a service test cannot run: agents and runtimes.

`FakeAgents` is an AgentClient (in the style of httpx's mock transport): each workspace's
agent is a Python object answering JSON-RPC. `FakeRuntime` is a Provisioner whose "process"
registers its fake agent with the real Registry, as an SDK agent would. Everything else in
a `world` is berth's real services on the in-memory adapters.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from berth.adapters.memory_bus import MemoryBus, MemoryCache, MemoryLocks
from berth.adapters.memory_store import MemoryStore
from berth.bootstrap import Container, assemble
from berth.domain.errors import AgentUnreachable
from berth.domain.workspace import Workspace
from berth.ports import AgentReply, ExitCallback, RunInfo, StreamItem
from berth.settings import Settings
from berth.wire import draining_error, rpc_result

ADMIN = "admin-token"
Handler = Callable[["Agent", dict[str, Any]], Awaitable[AgentReply]]


def text_of(doc: dict[str, Any]) -> str:
    parts = doc["params"]["message"].get("parts") or [{}]
    return str(parts[0].get("text", ""))


@dataclass
class Agent:
    """One run of a workspace's agent. `handler` decides each answer; the default echoes."""

    ws_id: str
    token: str
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)  # of each request received
    executed: list[str] = field(default_factory=list)  # messageIds, in order
    signals: list[dict[str, Any]] = field(default_factory=list)
    handler: Handler | None = None
    draining: bool = False
    alive: bool = True
    serves_signals: bool = True  # False: a stock A2A agent, 404 to berth's signals
    loses_resume: bool = False  # True: berth's resume signal never reaches it
    running: int = 0

    async def answer(self, doc: dict[str, Any]) -> AgentReply:
        self.received.append(doc)
        if self.draining:
            return AgentReply(200, draining_error(doc.get("id")))
        if self.handler is not None:
            return await self.handler(self, doc)
        return await echo(self, doc)


async def echo(agent: Agent, doc: dict[str, Any]) -> AgentReply:
    if "message" not in (doc.get("params") or {}):  # GetTask and friends: a task
        task = {"id": doc["params"].get("id"), "status": {"state": "TASK_STATE_COMPLETED"}}
        return AgentReply(200, rpc_result(doc.get("id"), task))
    msg = doc["params"]["message"]
    agent.running += 1
    try:
        text = text_of(doc)
        if text.startswith("sleep:"):
            await asyncio.sleep(float(text.split()[0][6:]))
        agent.executed.append(msg["messageId"])
        reply = {"message": {"role": "ROLE_AGENT", "parts": [{"text": f"echo: {text}"}]}}
        return AgentReply(200, rpc_result(doc.get("id"), reply))
    finally:
        agent.running -= 1


class FakeAgents:
    """The AgentClient port over in-process agents, addressed by URL."""

    def __init__(self) -> None:
        self.by_url: dict[str, Agent] = {}
        self.refuse: set[str] = set()  # URLs whose connection is refused (never reached)

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> AgentReply:
        base, _, path = url.partition("/signals/")
        agent = self.by_url.get(base.rstrip("/"))
        if agent is None or base.rstrip("/") in self.refuse:
            raise AgentUnreachable("connection refused", reached=False)
        if not agent.alive:
            raise AgentUnreachable("connection reset by peer")
        doc = json.loads(body)
        if path and not agent.serves_signals:
            agent.signals.append(doc)
            return AgentReply(404, b"not found")
        if path == "restart_pending":
            agent.signals.append(doc)
            agent.draining = True
            deadline = asyncio.get_running_loop().time() + float(doc["params"]["drain_seconds"])
            while agent.running and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
            report = {
                "drained": agent.running == 0,
                "in_flight": agent.running,
                "completed": [],
                "unfinished": [],
            }
            return AgentReply(200, rpc_result(doc.get("id"), report))
        if path == "resume" and agent.loses_resume:
            raise AgentUnreachable("timed out")
        if path == "resume":  # the SDK's: its drain is over, it takes messages again
            agent.signals.append(doc)
            agent.draining = False
            return AgentReply(200, rpc_result(doc.get("id"), {"resumed": True}))
        if path:
            return AgentReply(200, rpc_result(doc.get("id"), {}))
        agent.headers.append(dict(headers))
        task = asyncio.ensure_future(agent.answer(doc))
        while not task.done():
            await asyncio.sleep(0.005)
            if not agent.alive:  # killed mid-request
                task.cancel()
                raise AgentUnreachable("connection reset by peer")
        return task.result()

    def stream(
        self,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float,
        *,
        method: str = "POST",
    ) -> AsyncIterator[StreamItem]:
        async def gen() -> AsyncIterator[StreamItem]:
            reply = await self.post(url, body or b"", headers, timeout)
            yield StreamItem("reply", reply.body, reply.status, reply.content_type)

        return gen()

    async def request(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> AgentReply:
        if method == "POST" and body is not None:
            return await self.post(url, body, headers, timeout)
        return await self.get(url, headers, timeout)

    async def get(self, url: str, headers: dict[str, str], timeout: float) -> AgentReply:
        raise AgentUnreachable("not served", reached=False)

    async def close(self) -> None:
        return None


class FakeRuntime:
    """The `process` runtime, in process: a start makes a new Agent run that registers
    with berth's real Registry (through `register`, set by the world)."""

    runtime = "process"

    def __init__(self, agents: FakeAgents) -> None:
        self.agents = agents
        self.current: dict[str, Agent] = {}  # the latest started, by workspace
        self.versions: dict[tuple[str, int], Agent] = {}
        self.starts: dict[str, int] = {}
        self.register: Callable[[str, dict[str, Any]], Awaitable[Any]] | None = None
        self.fail_start: set[str] = set()  # workspace names whose next start exits at once
        self._callbacks: list[ExitCallback] = []

    def on_exit(self, callback: ExitCallback) -> None:
        self._callbacks.append(callback)

    async def start(self, ws: Workspace, identity: dict[str, str]) -> RunInfo:
        n = self.starts[ws.id] = self.starts.get(ws.id, 0) + 1
        url = f"http://127.0.0.1/agent-{ws.name}-{n}"  # loopback: passes the agent URL policy
        agent = Agent(ws.id, identity["BERTH_WORKSPACE_TOKEN"], url)
        previous = self.current.get(ws.id)
        if previous is not None:
            agent.handler = previous.handler  # the same code, a new process
        self.current[ws.id] = agent
        self.versions[(ws.id, ws.version)] = agent
        self.agents.by_url[url] = agent
        if ws.name in self.fail_start:
            self.fail_start.discard(ws.name)
            agent.alive = False
            asyncio.get_running_loop().call_later(0.01, self._exit, ws.id, 1, ws.version)
            return RunInfo(pid=n)
        assert self.register is not None
        asyncio.ensure_future(self.register(agent.token, {"url": url}))
        return RunInfo(pid=n)

    def crash(self, ws_id: str, code: int = -9) -> None:
        """kill -9 of the workspace's agent: connections reset, then berth sees the exit."""
        agent = self.current[ws_id]
        agent.alive = False
        asyncio.get_running_loop().call_later(0.05, self._exit, ws_id, code)

    def crash_version(self, ws_id: str, version: int, code: int = -9) -> None:
        """kill -9 of one version of the workspace's agent (a deploy runs two)."""
        agent = self.versions[(ws_id, version)]
        agent.alive = False
        asyncio.get_running_loop().call_later(0.05, self._exit, ws_id, code, version)

    def _exit(self, ws_id: str, code: int | None, version: int | None = None) -> None:
        for cb in self._callbacks:
            cb(ws_id, code, version)

    async def stop(self, ws: Workspace, grace: float) -> None:
        agent = self.versions.get((ws.id, ws.version), self.current.get(ws.id))
        if agent is not None and agent.alive:
            agent.alive = False
            await asyncio.sleep(0.05)  # a real stop takes a while: its cut requests fail first

    async def is_running(self, ws: Workspace) -> bool:
        agent = self.versions.get((ws.id, ws.version), self.current.get(ws.id))
        return agent is not None and agent.alive

    async def serves(self, ws: Workspace, url: str) -> bool | None:
        return None  # agents here register themselves: nobody else answers for them

    async def cleanup_orphans(self, known: dict[str, Workspace]) -> list[str]:
        return []

    async def logs(self, ws: Workspace, tail: int = 200) -> str:
        return ""

    async def remove_state(self, ws: Workspace) -> bool:
        return True

    async def close(self) -> None:
        return None


@dataclass
class World:
    c: Container
    agents: FakeAgents
    runtime: FakeRuntime
    store: MemoryStore

    def agent(self, ws: Workspace | str) -> Agent:
        ws_id = ws if isinstance(ws, str) else ws.id
        return self.runtime.current[ws_id]

    async def create(self, name: str, **spec: Any) -> Workspace:
        ws, _ = await self.c.workspaces.create({"name": name, "command": ["agent"], **spec})
        assert await self.c.roster.wait_for(
            ws.id, lambda w: w is not None and w.state.value == "online", 5
        ), (await self.c.roster.get(ws.id)).state
        return await self.c.roster.get(ws.id)

    async def send(
        self,
        ws: Workspace,
        text: str,
        *,
        message_id: str | None = None,
        wait: float = 5,
        method: str = "SendMessage",
        rid: Any = 1,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        msg: dict[str, Any] = {"role": "ROLE_USER", "parts": [{"text": text}]}
        if message_id is not None:
            msg["messageId"] = message_id
        body = json.dumps(
            {"jsonrpc": "2.0", "id": rid, "method": method, "params": {"message": msg}}
        ).encode()
        reply = await self.c.proxy.handle(ws, body, {"x-berth-wait": str(wait)})
        return reply.status, json.loads(reply.body), reply.headers


@asynccontextmanager
async def world(**settings: Any) -> AsyncIterator[World]:
    """berth's services on in-memory adapters, with fake agents and a fake runtime."""
    agents = FakeAgents()
    runtime = FakeRuntime(agents)
    store = MemoryStore()
    options: dict[str, Any] = {
        "heartbeat_seconds": 0.2,
        "heartbeat_timeout": 60.0,  # fake agents do not heartbeat
        "start_timeout": 3.0,
        "stop_grace_seconds": 0.1,
        "lease_seconds": 5.0,
        "data_dir": "/nonexistent-berth-service-test",
    }
    options.update(settings)
    c = assemble(
        Settings(**options),
        store=store,
        shared=(MemoryCache(), MemoryLocks(), MemoryBus()),
        client=agents,
        provisioners={"process": runtime},
        admin=ADMIN,
        sole=True,
    )
    runtime.register = c.registry.register
    await c.start()
    try:
        yield World(c, agents, runtime, store)
    finally:
        await c.stop()
