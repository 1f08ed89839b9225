"""Finding 5 of docs/reliability.md: PostgreSQL going away (a TCP proxy that drops every
connection, tests/services.Outage, so the shared server is never restarted) is met with
the right answers: a berth started meanwhile waits for it, a restart asked meanwhile is a
503, and a stream open across it ends with its reply and no error in berth's log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import BerthServer, create, executions, send_body, wait_status
from tests.e2e.test_replicas import _admin
from tests.services import Outage, require_postgres

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


async def _stream(c: httpx.AsyncClient, ref: str, text: str, mid: str) -> list[dict]:
    body = send_body(text, mid)
    body["method"] = "SendStreamingMessage"
    events = []
    async with c.stream(
        "POST", f"/v1/workspaces/{ref}/a2a", json=body, headers={"a2a-version": "1.0"}
    ) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    return events


async def test_postgres_away_at_start_during_a_restart_and_under_a_stream(tmp_path: Path):
    pg = require_postgres()
    name = f"berth_e2e_{uuid.uuid4().hex[:10]}"
    await _admin(pg, f"CREATE DATABASE {name}")
    outage = Outage(pg.rsplit("/", 1)[0] + "/" + name)  # down until up()
    server = BerthServer(
        tmp_path / "r", env={"BERTH_DATABASE_URL": outage.url, "BERTH_STREAM_KEEP_ALIVE": "0.5"}
    )
    try:
        # started while the database is away: it waits (it used to exit with code 3)
        starting = asyncio.create_task(asyncio.to_thread(server.start, 90))
        deadline = asyncio.get_running_loop().time() + 45
        while "the database is unavailable" not in (
            server.log.read_text() if server.log.exists() else ""
        ):
            assert asyncio.get_running_loop().time() < deadline, "berth never said it waits"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.5)  # a few tries later: still waiting, not exited
        assert not starting.done() and server.proc is not None and server.proc.poll() is None
        await outage.up()
        await starting

        async with server.client() as c:
            await create(c, "pg-away")
            state = (await wait_status(c, "pg-away", "online"))["state_dir"]
            stream = asyncio.create_task(_stream(c, "pg-away", "sleep:3 across", "sa-1"))
            while executions(state)[0]["sa-1"] < 1:  # accepted and forwarded: the agent works
                await asyncio.sleep(0.05)
            await outage.down()
            r = await c.post("/v1/workspaces/pg-away/restart", json={})
            assert r.status_code == 503, r.text  # was a 500
            assert r.json()["error"]["code"] == "store_unavailable"
            assert r.headers.get("retry-after")
            await asyncio.sleep(3.5)  # the agent answers while the store is away
            assert not stream.done()
            await outage.up()
            events = await asyncio.wait_for(stream, 60)
            assert "echo: sleep:3 across" in json.dumps(events[-1])
            assert executions(state)[0]["sa-1"] == 1
        log = server.log.read_text()
        assert "response already started" not in log
        assert "Exception in ASGI application" not in log
    finally:
        with contextlib.suppress(OSError):  # up again if a failure left it down: berth's
            await outage.up()  # shutdown must reach the database to stop its agent
        await asyncio.to_thread(server.stop)  # its shutdown goes through the proxy on this loop
        server.kill9()
        await outage.down()
        await _admin(pg, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
