"""The SDK's heartbeat says why it drains, and takes berth's answer that a drain berth asked
for is over (the restart's resume signal was lost: tests/service/test_lifecycle.py has
berth's side). A drain for the process's own exit (SIGTERM) is never reopened so."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from berth.sdk.drain import Drain
from tests.e2e.harness import free_port, serve_app
from tests.unit.test_sdk_register import _platform

_DURING_HEARTBEAT: list[Drain] = []  # drains asked again while a heartbeat is answered


@pytest.fixture
async def berth() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A fake berth whose every heartbeat answer says `resume`; yields its URL and the
    heartbeats' bodies."""
    beats: list[dict[str, Any]] = []
    _DURING_HEARTBEAT.clear()

    async def register(request: web.Request) -> web.Response:
        return web.json_response({"workspace_id": "w", "name": "w", "heartbeat_seconds": 0.05})

    async def heartbeat(request: web.Request) -> web.Response:
        beats.append(await request.json())
        for d in _DURING_HEARTBEAT:  # a new restart's restart_pending, before this answer
            await d.drain(30)
        return web.json_response(
            {"ok": True, "reregister": False, "heartbeat_seconds": 0.05, "resume": True}
        )

    app = web.Application()
    app.router.add_post("/v1/agents/register", register)
    app.router.add_post("/v1/agents/heartbeat", heartbeat)
    runner, url = await serve_app(app)
    try:
        yield url, beats
    finally:
        await runner.cleanup()


async def _beat_with(
    berth: tuple[str, list[dict[str, Any]]], tmp_path: Path, drain: Drain
) -> list[dict[str, Any]]:
    url, beats = berth
    port = free_port()
    p = _platform(url, port, tmp_path, drain)
    p.heartbeat_seconds = 0.05
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    task = asyncio.create_task(p.run())
    try:
        async with server:
            for _ in range(100):
                if len(beats) >= 3:
                    break
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return beats


async def test_a_drain_berth_asked_for_ends_when_berth_answers_resume(
    berth: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    drain = Drain()
    await drain.drain(30)  # berth's restart_pending
    beats = await _beat_with(berth, tmp_path, drain)
    assert beats[0]["draining"] is True and beats[0]["exiting"] is False
    assert not drain.draining  # reopened by the first answer
    assert all(b["draining"] is False for b in beats[1:])


async def test_the_process_own_exit_drain_is_never_reopened_by_a_heartbeat(
    berth: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    drain = Drain()
    drain.exiting = True  # what the server's SIGTERM handler sets (sdk/server.py)
    await drain.drain(30)
    beats = await _beat_with(berth, tmp_path, drain)
    assert len(beats) >= 3 and drain.draining
    assert all(b["draining"] is True and b["exiting"] is True for b in beats)


async def test_a_resume_answer_does_not_end_a_drain_asked_after_its_heartbeat_left(
    berth: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    drain = Drain()
    await drain.drain(30)
    _DURING_HEARTBEAT.append(drain)  # every heartbeat's answer comes after a new drain
    beats = await _beat_with(berth, tmp_path, drain)
    assert len(beats) >= 3 and drain.draining
    assert all(b["draining"] is True for b in beats)
