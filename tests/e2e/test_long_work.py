"""Issue #12, long work: a message that runs much longer than the lease is never delivered
again while its forward is alive, and across the death of the replica that forwarded it
the agent's work is joined, not run twice (PostgreSQL + Redis, a real SDK agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import BerthServer, executions, free_port, reply_text, send, wait_status
from tests.e2e.test_replicas import ExternalEcho, _admin
from tests.services import require_postgres, require_redis

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

LEASE = 3.0  # seconds; both messages run over 3 leases


@dataclass
class Pair:
    """Two replicas (A, B) on one fresh PostgreSQL database and Redis, not started yet; the
    clients and agents a test adds are closed with them."""

    a: BerthServer
    b: BerthServer
    tmp: Path
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    agents: list[ExternalEcho] = field(default_factory=list)

    async def start(self, s: BerthServer) -> httpx.AsyncClient:
        await asyncio.to_thread(s.start)
        c = s.client()
        self.clients.append(c)
        return c

    async def external(
        self, c: httpx.AsyncClient, s: BerthServer, name: str, **spec: Any
    ) -> ExternalEcho:
        """An external workspace made on `c`, served by an SDK echo agent registering with `s`."""
        port = free_port()
        body = {"name": name, "runtime": "external", "url": f"http://127.0.0.1:{port}", **spec}
        r = await c.post("/v1/workspaces", json=body)
        assert r.status_code == 201, r.text
        ws = r.json()
        agent = ExternalEcho(self.tmp / "agent" / "state", port, s.url, ws["id"], ws["agent_token"])
        self.agents.append(agent)
        await wait_status(c, name, "online")
        return agent


@contextlib.asynccontextmanager
async def _pair(tmp_path: Path, **env: str) -> AsyncIterator[Pair]:
    pg, redis = require_postgres(), require_redis()
    name = f"berth_e2e_{uuid.uuid4().hex[:10]}"
    await _admin(pg, f"CREATE DATABASE {name}")
    env = {
        "BERTH_DATABASE_URL": pg.rsplit("/", 1)[0] + "/" + name,
        "BERTH_REDIS_URL": redis,
        "BERTH_REDIS_PREFIX": f"t-{name}:",
        # the agent heartbeats to A, which goes away: its silence is not what is tested here
        "BERTH_HEARTBEAT_TIMEOUT": "120",
        **env,
    }
    a, b = (BerthServer(tmp_path / f"r{i}", env={**env, "BERTH_REPLICA_ID": f"r{i}"}) for i in "ab")
    pair = Pair(a, b, tmp_path)
    try:
        yield pair
    finally:
        for c in pair.clients:
            await c.aclose()
        for agent in pair.agents:
            agent.stop()
        for s in (a, b):
            await asyncio.to_thread(s.stop)
            s.kill9()
        await _admin(pg, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_long_work_outlives_leases_and_the_replica_that_forwarded_it(tmp_path: Path):
    async with _pair(tmp_path, BERTH_LEASE_SECONDS=f"{LEASE:g}") as p:
        ca = await p.start(p.a)
        agent = await p.external(ca, p.a, "long", max_concurrency=2)

        # A is the only replica, so A forwards both; B starts while they run.
        t0 = time.monotonic()
        alive = asyncio.create_task(send(ca, "long", f"sleep:{4 * LEASE:g} alive", "lw-alive"))
        cut = asyncio.create_task(send(ca, "long", f"sleep:{8 * LEASE:g} cut", "lw-cut"))
        while executions(agent.state)[0]["lw-cut"] < 1:
            assert time.monotonic() - t0 < 30, "the agent never started lw-cut"
            await asyncio.sleep(0.05)
        cb = await p.start(p.b)
        assert reply_text((await alive).json()) == f"echo: sleep:{4 * LEASE:g} alive"

        p.a.kill9()  # lw-cut's forward dies with A; the agent keeps working on it
        with pytest.raises(httpx.TransportError):
            await cut
        # its caller sends again (same messageId) to a live replica and gets the one result
        again = await send(cb, "long", f"sleep:{8 * LEASE:g} cut", "lw-cut")
        assert reply_text(again.json()) == f"echo: sleep:{8 * LEASE:g} cut"
        assert again.headers.get("x-berth-replayed") == "true"

        listed = (await cb.get("/v1/workspaces/long/deliveries")).json()["deliveries"]
        by_id = {d["message_id"]: d for d in listed}
        assert by_id["lw-alive"]["status"] == "done" and by_id["lw-alive"]["forwards"] == 1
        # B took lw-cut over once A's lease ran out (the forward that died), and only then
        assert by_id["lw-cut"]["status"] == "done" and by_id["lw-cut"]["forwards"] == 2
        starts, dones = executions(agent.state)
        assert (starts["lw-alive"], dones["lw-alive"]) == (1, 1)
        assert (starts["lw-cut"], dones["lw-cut"]) == (1, 1)  # joined, not run again


async def test_a_replica_stopped_gracefully_gives_its_work_back_at_once(tmp_path: Path):
    """A replica stopped with SIGTERM while it forwards a message no caller waits on (sent
    with X-Berth-Wait: 0): after BERTH_SHUTDOWN_GRACE_SECONDS it gives its lease back, and
    another replica delivers the message at once, not after the lease (30 s) runs out; the
    agent's execution, still running, is joined: one execution, one reply."""
    async with _pair(tmp_path, BERTH_LEASE_SECONDS="30", BERTH_SHUTDOWN_GRACE_SECONDS="1") as p:
        ca = await p.start(p.a)
        agent = await p.external(ca, p.a, "handed")
        cb = await p.start(p.b)

        accepted = await send(ca, "handed", "sleep:6 handed over", "hand-1", wait=0)
        assert accepted.status_code == 202, accepted.text
        t0 = time.monotonic()
        while executions(agent.state)[0]["hand-1"] < 1:
            assert time.monotonic() - t0 < 30, "the agent never started hand-1"
            await asyncio.sleep(0.05)
        stopped = time.monotonic()
        assert await asyncio.to_thread(p.a.stop) == 0  # SIGTERM: a graceful stop
        status_url = accepted.json()["status_url"]
        while (d := (await cb.get(status_url)).json())["status"] != "done":
            assert time.monotonic() - stopped < 20, d  # the lease alone would take 30 s
            await asyncio.sleep(0.2)
        assert d["forwards"] == 2  # A's, cut by its stop, and B's, which joined it
        starts, dones = executions(agent.state)
        assert (starts["hand-1"], dones["hand-1"]) == (1, 1)
