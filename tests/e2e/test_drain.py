"""Issue #2 §6: the drain lets in-flight work finish and holds what arrives meanwhile."""

import asyncio
import time
from pathlib import Path

import pytest

from tests.e2e.harness import (
    BOTH_PATHS,
    create,
    executions,
    reply_text,
    send,
    wait_cycles_done,
    wait_status,
)

pytestmark = pytest.mark.slow


@BOTH_PATHS
async def test_in_flight_finishes_inside_the_drain_and_new_work_waits(berth_server):
    async with berth_server.client() as c:
        await create(c, "drainy", max_concurrency=2, drain_seconds=10)
        info = (await c.get("/v1/workspaces/drainy")).json()
        slow = asyncio.create_task(send(c, "drainy", "sleep:1.5 inflight", "in-flight-1"))
        await asyncio.sleep(0.4)
        r = await c.post("/v1/workspaces/drainy/restart", json={"reason": "drain test"})
        restart = r.json()
        await asyncio.sleep(0.2)
        during = asyncio.create_task(send(c, "drainy", "during", "during-1"))
        first = await slow
        assert reply_text(first.json()) == "echo: sleep:1.5 inflight"
        second = await during
        assert reply_text(second.json()) == "echo: during"
        rec = (await c.get(f"/v1/workspaces/drainy/restarts/{restart['id']}")).json()
        for _ in range(100):
            if rec["phase"] == "done":
                break
            await asyncio.sleep(0.1)
            rec = (await c.get(f"/v1/workspaces/drainy/restarts/{restart['id']}")).json()
        assert rec["phase"] == "done"
        rep = rec["drain_report"]
        assert rep["mode"] == "agent" and rep["drained"] is True
        assert "in-flight-1" in rep["completed"] and rep["unfinished"] == []
        phases = [p["phase"] for p in rec["phases"]]
        assert phases == ["draining", "stopping", "requeue", "starting", "replay"]
        drain = rec["phases"][0]
        assert drain["seconds"] < 5, (
            "the drain answered when the work was done, not after drain_seconds"
        )
        # the message sent during the drain ran on the new process, after the restart
        new = await wait_status(c, "drainy", "online")
        assert new["pid"] != info["pid"]
        starts, dones = executions(new["state_dir"])
        assert starts["in-flight-1"] == dones["in-flight-1"] == 1
        assert starts["during-1"] == dones["during-1"] == 1
        lines = open(f"{new['state_dir']}/executions.log").read().splitlines()
        assert lines.index("start during-1") > lines.index("done in-flight-1")
        d = (await c.get(f"/v1/deliveries/{second.headers['x-berth-delivery-id']}")).json()
        assert d["first_forwarded_at"] >= rec["phases"][-2]["started_at"]


@BOTH_PATHS
async def test_a_second_restart_request_joins_the_first(berth_server):
    async with berth_server.client() as c:
        await create(c, "joiny")
        await wait_cycles_done(c, "joiny")  # else both may join the startup cycle
        r1, r2 = await asyncio.gather(
            c.post("/v1/workspaces/joiny/restart"), c.post("/v1/workspaces/joiny/restart")
        )
        a, b = r1.json(), r2.json()
        assert a["id"] == b["id"] and sorted([a["joined"], b["joined"]]) == [False, True]
        await wait_status(c, "joiny", "online")
        assert (
            len((await c.get("/v1/workspaces/joiny/restarts")).json()["restarts"]) == 2
        )  # start + one restart


@BOTH_PATHS
async def test_pause_holds_messages_and_resume_delivers_them(berth_server):
    async with berth_server.client() as c:
        await create(c, "pausy")
        r = await c.post("/v1/workspaces/pausy/pause")
        assert r.status_code == 200 and r.json()["workspace"]["status"] == "paused"
        t0 = time.monotonic()
        held = await send(c, "pausy", "held", "held-1", wait=0.5)
        assert held.status_code == 202 and time.monotonic() - t0 >= 0.5
        # other methods answer 503 with Retry-After while paused
        g = await c.post(
            "/v1/workspaces/pausy/a2a",
            headers={"a2a-version": "1.0", "x-berth-wait": "0.2"},
            json={"jsonrpc": "2.0", "id": 3, "method": "GetTask", "params": {"id": "t"}},
        )
        assert (
            g.status_code == 503
            and g.headers["retry-after"]
            and g.json()["error"]["code"] == -32603
        )
        waiting = asyncio.create_task(send(c, "pausy", "held", "held-1"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert (await c.post("/v1/workspaces/pausy/resume")).status_code == 200
        assert reply_text((await waiting).json()) == "echo: held"


@BOTH_PATHS
async def test_remove_cancels_pending_and_lists_them(berth_server):
    async with berth_server.client() as c:
        await create(c, "doomed")
        state_dir = Path((await wait_status(c, "doomed", "online"))["state_dir"])
        assert state_dir.exists()
        await c.post("/v1/workspaces/doomed/pause")
        ids = [
            (await send(c, "doomed", f"x{i}", f"doomed-{i}", wait=0)).json()["delivery_id"]
            for i in range(3)
        ]
        r = await c.delete("/v1/workspaces/doomed")
        assert r.status_code == 200
        assert sorted(d["id"] for d in r.json()["canceled"]) == sorted(ids)
        assert all(d["status"] == "canceled" for d in r.json()["canceled"])
        assert (await c.get("/v1/workspaces/doomed")).status_code == 404
        assert (await c.get(f"/v1/deliveries/{ids[0]}")).json()["status"] == "canceled"
        assert not state_dir.exists()  # removed for good: its state goes with it


@BOTH_PATHS
async def test_cancel_and_retry_of_a_queued_delivery(berth_server):
    async with berth_server.client() as c:
        await create(c, "ops")
        await c.post("/v1/workspaces/ops/pause")
        did = (await send(c, "ops", "cancel me", "ops-1", wait=0)).json()["delivery_id"]
        r = await c.post(f"/v1/deliveries/{did}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "canceled"
        r = await c.post(f"/v1/deliveries/{did}/cancel")
        assert r.status_code == 409 and r.json()["error"]["code"] == "not_cancelable"
        r = await c.post(f"/v1/deliveries/{did}/retry")
        assert r.status_code == 200 and r.json()["status"] == "queued"
        await c.post("/v1/workspaces/ops/resume")
        again = await send(c, "ops", "cancel me", "ops-1")
        assert reply_text(again.json()) == "echo: cancel me"
