"""The SDK registers once its port accepts connections, not when its app starts.

berth forwards to an agent as soon as it registers. The app's lifespan (which starts the
registration) runs before the server binds its socket, so a registration sent at once
could land first, and berth's forward then found the port closed: a connection refused,
a forward that counts no attempt, a second's retry (the dashboard's dead letter showed
3/4 tries instead of 3/3)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from berth.sdk import platform as platform_mod
from berth.sdk.drain import Drain
from berth.sdk.platform import Identity, Platform
from tests.e2e.harness import free_port, serve_app


async def _port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


@pytest.fixture
async def berth() -> AsyncIterator[tuple[str, list[bool], int]]:
    """A fake berth on loopback whose registration does what the real one leads to: a
    connection to the agent at once. Yields (its URL, whether each registration found the
    agent's port open, the agent's port)."""
    agent_port = free_port()
    found: list[bool] = []

    async def register(request: web.Request) -> web.Response:
        found.append(await _port_open(agent_port))
        return web.json_response({"workspace_id": "w", "name": "w", "heartbeat_seconds": 60})

    app = web.Application()
    app.router.add_post("/v1/agents/register", register)
    runner, url = await serve_app(app)
    try:
        yield url, found, agent_port
    finally:
        await runner.cleanup()


def _platform(
    berth_url: str, agent_port: int, tmp_path: Path, drain: Drain | None = None
) -> Platform:
    ident = Identity(
        berth_url=berth_url,
        workspace_id="w",
        token="t",
        port=agent_port,
        state_dir=tmp_path,
        drain_seconds=1,
        advertise_url=f"http://127.0.0.1:{agent_port}",
        max_concurrency=None,
    )
    return Platform(ident, drain or Drain(), {"name": "a"}, {})


async def test_the_agent_registers_only_once_its_port_accepts_connections(
    berth: tuple[str, list[bool], int], tmp_path: Path
) -> None:
    url, found, agent_port = berth
    p = _platform(url, agent_port, tmp_path)
    task = asyncio.create_task(p.run())
    try:
        await asyncio.sleep(0.5)  # the app started, its server has not bound yet
        assert found == [] and not p.registered.is_set()
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", agent_port)
        async with server:
            await asyncio.wait_for(p.registered.wait(), 5)
            assert found == [True]  # berth's first forward would reach it
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_port_never_seen_listening_still_registers_after_the_wait(
    berth: tuple[str, list[bool], int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server bound to an interface other than loopback is never seen from here: the agent
    registers anyway, late, rather than never."""
    monkeypatch.setattr(platform_mod, "LISTEN_WAIT", 0.3)
    url, found, agent_port = berth
    p = _platform(url, agent_port, tmp_path)
    task = asyncio.create_task(p.run())
    try:
        await asyncio.wait_for(p.registered.wait(), 5)
        assert found == [False]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def _recording_berth() -> AsyncIterator[tuple[str, list[dict[str, Any]], asyncio.Event]]:
    """A fake berth that records each registration: (its URL, the bodies, set at the first)."""
    registered: list[dict[str, Any]] = []
    got = asyncio.Event()

    async def register(request: web.Request) -> web.Response:
        registered.append(await request.json())
        got.set()
        return web.json_response({"workspace_id": "w", "name": "w", "heartbeat_seconds": 60})

    app = web.Application()
    app.router.add_post("/v1/agents/register", register)
    runner, url = await serve_app(app)
    try:
        yield url, registered, got
    finally:
        await runner.cleanup()


async def _echo(berth_url: str, port: int, state: Path, stderr: int) -> asyncio.subprocess.Process:
    """The echo example served by the SDK's `serve`, as berth would start it."""
    env = {
        **os.environ,
        "BERTH_URL": berth_url,
        "BERTH_TOKEN": "t",
        "BERTH_WORKSPACE_ID": "w",
        "BERTH_PORT": str(port),
        "BERTH_STATE_DIR": str(state),
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "berth.examples.echo",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=stderr,
    )


async def test_an_agent_whose_port_another_program_took_exits_without_registering(
    tmp_path: Path,
) -> None:
    """The port berth chose was free, but another program took it before the agent could
    bind it. That program accepts connections there, so an agent that only waits to see its
    port accept them would register it, and berth would forward the workspace's messages to
    that program (CI saw one dead-lettered as "agent rejected the message"). `serve` binds
    first: the agent exits with uvicorn's startup failure and never registers."""
    other = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = other.sockets[0].getsockname()[1]
    async with _recording_berth() as (url, registered, _), other:
        proc = await _echo(url, port, tmp_path, asyncio.subprocess.PIPE)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 3, err.decode()
        assert f"cannot listen on 127.0.0.1 port {port}" in err.decode()
        await asyncio.sleep(0.3)  # a registration sent at the end would have landed
        assert registered == []


async def test_an_agent_registers_at_once_on_the_port_serve_bound(tmp_path: Path) -> None:
    """The other side: on a free port the same agent registers, and answers at the URL it
    registered (the socket bound before the app started is the one uvicorn serves)."""
    port = free_port()
    async with _recording_berth() as (url, registered, got):
        proc = await _echo(url, port, tmp_path, asyncio.subprocess.DEVNULL)
        try:
            await asyncio.wait_for(got.wait(), 60)
            assert registered[0]["url"] == f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{port}/healthz") as r:
                    assert r.status == 200 and (await r.json())["status"] == "ok"
        finally:
            if proc.returncode is None:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0  # SIGTERM: drained, then a clean exit
