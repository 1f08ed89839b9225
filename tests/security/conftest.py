"""Security tests against a real `berth serve`, with a recording external agent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.e2e.harness import BerthServer, free_port

# what a process agent may find in its environment: what berth passes on, the shell's
# own, and the identity berth gives it (docs/security.md)
ALLOWED_AGENT_ENV = {
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "OTEL_SDK_DISABLED",
    "OTEL_INSTRUMENTATION_A2A_SDK_ENABLED",
    "HOME",
    "TMPDIR",
    "PWD",
    "SHLVL",
    "_",
    "PYTHONUNBUFFERED",
    "BERTH_PORT",
    "BERTH_STATE_DIR",
    "BERTH_WORKSPACE_TOKEN",
    "BERTH_WORKSPACE_ID",
    "BERTH_WORKSPACE_NAME",
    "BERTH_URL",
    "BERTH_INSTANCE",
    "BERTH_HEARTBEAT_SECONDS",
    "BERTH_DRAIN_SECONDS",
    "BERTH_MAX_CONCURRENCY",
}


@pytest.fixture(scope="module")
def berth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BerthServer]:
    """One real `berth serve` per module (its tests use distinct workspace names). Its
    recording agents never heartbeat, and these tests are not about liveness: silence
    only ends a workspace after 5 minutes, not the harness's 4 s (a loaded machine took
    longer than that between an agent's registration and its test's last send)."""
    server = BerthServer(
        tmp_path_factory.mktemp("berth") / "berth", env={"BERTH_HEARTBEAT_TIMEOUT": "300"}
    ).start()
    try:
        yield server
    finally:
        server.stop()
        server.kill9()


class RecordingAgent:
    """A minimal A2A agent on loopback: answers every JSON-RPC request with a message
    naming the text it got, and records each request's headers and body."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        doc = await request.json()
        self.requests.append(({k.lower(): v for k, v in request.headers.items()}, doc))
        msg = (doc.get("params") or {}).get("message") or {}
        text = "".join(p.get("text", "") for p in msg.get("parts") or [])
        result = {
            "message": {
                "role": "ROLE_AGENT",
                "messageId": f"re-{msg.get('messageId')}",
                "parts": [{"text": f"echo: {text}"}],
            }
        }
        return web.json_response({"jsonrpc": "2.0", "id": doc.get("id"), "result": result})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def register(self, berth_url: str, token: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=berth_url, timeout=30) as c:
            return await c.post(
                "/v1/agents/register",
                headers={"authorization": f"Bearer {token}"},
                json={"url": self.url, "agent_card": {"name": "rec", "version": "1"}},
            )


@pytest.fixture
async def agent() -> AsyncIterator[RecordingAgent]:
    a = RecordingAgent()
    await a.start()
    try:
        yield a
    finally:
        await a.stop()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "a2a-version": "1.0"}


async def external(
    c: httpx.AsyncClient, server: BerthServer, a: RecordingAgent, name: str, **spec: Any
) -> dict[str, Any]:
    """An external workspace whose agent is `a`, registered with its agent credential."""
    r = await c.post("/v1/workspaces", json={"name": name, "runtime": "external", **spec})
    assert r.status_code == 201, r.text
    ws: dict[str, Any] = r.json()
    # at once, as a real agent may: the first start cycle takes the registration for the
    # start it waits for (this agent never heartbeats: nothing would mend a demotion)
    reg = await a.register(server.url, ws["agent_token"])
    assert reg.status_code == 200, reg.text
    for _ in range(100):
        if (await c.get(f"/v1/workspaces/{name}")).json()["status"] == "online":
            return ws
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} never came online")
