"""One berth on PostgreSQL, sends at concurrency 16 to an agent that answers at once.

A message's accept on PostgreSQL takes a flush, in which another caller's task may claim,
forward and settle it. Each caller must still be answered by that settle, not by its
waiter's next look at the store, which comes 2 s after the wait began (before the fix,
at c=16 most callers were answered that way: 1.5-2 s for a message the agent answered in
under a millisecond). Not a speed test: the bound is the poll's 2 s, against replies that
take tens of milliseconds here.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import BerthServer, free_port, send
from tests.e2e.test_replicas import _admin
from tests.services import require_postgres

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
TRIVIAL = Path(__file__).resolve().parents[2] / "bench" / "_trivial.py"


@pytest.fixture
async def berth_on_pg(tmp_path: Path) -> AsyncIterator[tuple[BerthServer, str]]:
    pg = require_postgres()
    name = f"berth_e2e_{uuid.uuid4().hex[:10]}"
    await _admin(pg, f"CREATE DATABASE {name}")
    port = free_port()
    agent = subprocess.Popen(
        [sys.executable, str(TRIVIAL), "agent", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = BerthServer(
        tmp_path / "b", env={"BERTH_DATABASE_URL": pg.rsplit("/", 1)[0] + "/" + name}
    )
    try:
        deadline = time.monotonic() + 15
        async with httpx.AsyncClient(timeout=1) as h:
            while True:  # the agent is up
                try:
                    if (await h.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the trivial agent did not start"
                await asyncio.sleep(0.05)
        server.start()
        yield server, f"http://127.0.0.1:{port}/"
    finally:
        server.stop()
        server.kill9()
        agent.kill()
        agent.wait()
        await _admin(pg, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_concurrent_sends_on_postgresql_are_answered_by_the_settle(
    berth_on_pg: tuple[BerthServer, str],
) -> None:
    server, agent = berth_on_pg
    async with server.client() as c:
        r = await c.post(
            "/v1/workspaces",
            json={"name": "fast", "runtime": "external", "url": agent, "max_concurrency": 64},
        )
        assert r.status_code == 201, r.text
        deadline = time.monotonic() + 30
        while (await c.get("/v1/workspaces/fast")).json()["status"] != "online":
            assert time.monotonic() < deadline, "the workspace did not come online"
            await asyncio.sleep(0.05)

        async def timed() -> tuple[httpx.Response, float]:
            t0 = time.monotonic()
            r = await send(c, "fast", "hi", wait=10)
            return r, time.monotonic() - t0

        for _ in range(3):
            got = await asyncio.gather(*(timed() for _ in range(16)))
            assert [r.status_code for r, _ in got] == [200] * 16, [r.text for r, _ in got]
            assert all("result" in r.json() for r, _ in got)
            slowest = max(took for _, took in got)
            assert slowest < 1.0, f"a caller waited {slowest:.2f} s: answered by the poll"
