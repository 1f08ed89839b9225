"""Issue #2 §2 and §3: kill -9 of an agent, and of berth itself, loses nothing."""

import asyncio
import os
import signal

import pytest

from tests.e2e.harness import (
    BOTH_PATHS,
    BerthServer,
    create,
    executions,
    send,
    wait_deliveries_final,
    wait_status,
)

pytestmark = pytest.mark.slow


@BOTH_PATHS
async def test_kill9_of_agent_with_work_in_flight_and_queued(berth_server):
    async with berth_server.client() as c:
        ws = await create(c, "crashy", max_concurrency=1)
        ids = []
        for i in range(6):
            r = await send(c, "crashy", f"sleep:1 m{i}", f"k-{i}", wait=0)
            assert r.status_code == 202
            ids.append(r.json()["delivery_id"])
        await asyncio.sleep(0.5)  # the first is in flight, the rest queued
        info = (await c.get("/v1/workspaces/crashy")).json()
        assert info["in_flight"] == 1 and info["queue_depth"] >= 3
        cut = (await c.get("/v1/workspaces/crashy/deliveries?status=in_flight")).json()[
            "deliveries"
        ][0]
        os.kill(info["pid"], signal.SIGKILL)
        final = await wait_deliveries_final(c, ids, timeout=60)
        assert [d["status"] for d in final] == ["done"] * 6
        redelivered = next(d for d in final if d["id"] == cut["id"])
        assert redelivered["forwards"] == 2 and redelivered["attempts"] == 1
        assert all(d["attempts"] == 0 for d in final if d["id"] != cut["id"])
        back = await wait_status(c, "crashy", "online")
        assert back["crash_count"] == 1 and back["pid"] != info["pid"]
        starts, dones = executions(back["state_dir"])
        assert all(dones[f"k-{i}"] == 1 for i in range(6))
        assert starts[cut["message_id"]] == 2  # cut mid-execution by the kill, so it ran again
        del ws


async def test_kill9_of_berth_with_work_queued_and_in_flight(tmp_path):
    data = tmp_path / "b"
    first = BerthServer(data).start()
    try:
        async with first.client() as c:
            await create(c, "survivor", max_concurrency=1, drain_seconds=10)
            ids = []
            for i in range(5):
                r = await send(c, "survivor", f"sleep:0.5 s{i}", f"s-{i}", wait=0)
                ids.append(r.json()["delivery_id"])
            await asyncio.sleep(0.3)
            old = (await c.get("/v1/workspaces/survivor")).json()
            assert old["in_flight"] == 1
    finally:
        first.kill9()
    second = BerthServer(data, port=first.port).start()
    try:
        async with second.client() as c:
            final = await wait_deliveries_final(c, ids, timeout=60)
            assert [d["status"] for d in final] == ["done"] * 5
            info = await wait_status(c, "survivor", "online")
            assert info["pid"] != old["pid"]
            assert not _alive(old["pid"]), "the old agent process was left behind"
            starts, dones = executions(info["state_dir"])
            assert all(dones[f"s-{i}"] == 1 for i in range(5)), dones
    finally:
        second.stop()
        second.kill9()


@BOTH_PATHS
async def test_poison_message_ends_dead_and_the_workspace_keeps_serving(berth_server):
    async with berth_server.client() as c:
        await create(c, "poisoned")
        r = await send(c, "poisoned", "crash now", "poison-1", wait=60)
        assert r.status_code == 200
        err = r.json()["error"]
        assert (
            err["data"]["berth"]["status"] == "dead" and "poison" in err["data"]["berth"]["reason"]
        )
        d = (await c.get(f"/v1/deliveries/{r.headers['x-berth-delivery-id']}")).json()
        assert d["status"] == "dead" and d["attempts"] == 3
        await wait_status(c, "poisoned", "online")
        ok = await send(c, "poisoned", "fine", "after-poison")
        assert ok.json()["result"]


async def test_graceful_berth_stop_drains_and_stops_its_agents(tmp_path):
    server = BerthServer(tmp_path / "g").start()
    async with server.client() as c:
        await create(c, "graceful")
        pid = (await c.get("/v1/workspaces/graceful")).json()["pid"]
    assert server.stop() == 0
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
