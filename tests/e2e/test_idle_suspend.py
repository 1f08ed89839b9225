"""Idle suspend and wake on message with a real process workspace (issue 13)."""

from __future__ import annotations

import time

import pytest

from tests.e2e.harness import create, reply_text, send, wait_status

pytestmark = pytest.mark.slow


async def test_a_suspended_process_workspace_wakes_on_a_message(berth_server) -> None:
    async with berth_server.client() as c:
        ws = await create(c, "sleepy", idle_suspend_seconds=1)
        assert reply_text((await send(c, "sleepy", "hello", "m0")).json()) == "echo: hello"
        first_pid = (await c.get("/v1/workspaces/sleepy")).json()["pid"]
        suspended = await wait_status(c, "sleepy", "suspended", timeout=30)
        assert suspended["idle_suspend_seconds"] == 1.0
        t0 = time.monotonic()
        r = await send(c, "sleepy", "wake up", "m1")
        woke = time.monotonic() - t0
        assert r.status_code == 200 and reply_text(r.json()) == "echo: wake up"
        print(f"\nwake-up (process workspace): send -> reply {woke * 1000:.0f} ms")
        now = (await c.get("/v1/workspaces/sleepy")).json()
        assert now["status"] == "online" and now["pid"] != first_pid
        restarts = (await c.get("/v1/workspaces/sleepy/restarts")).json()["restarts"]
        assert restarts[0]["trigger"] == "wake" and restarts[0]["phase"] == "done"
        assert ws["id"] == now["id"]
