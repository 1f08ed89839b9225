"""Issue 13: deploys on real process workspaces. Under steady load a replace loses nothing
and runs nothing twice; a task started on the old version is found by the new one."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.harness import BerthServer, create, executions, reply_text, send, send_body

pytestmark = pytest.mark.slow


async def _follow(c: httpx.AsyncClient, ws: str, rec: dict[str, Any]) -> dict[str, Any]:
    while rec["phase"] not in ("done", "failed"):
        await asyncio.sleep(0.05)
        rec = (await c.get(f"/v1/workspaces/{ws}/restarts/{rec['id']}")).json()
    return rec


async def test_a_deploy_under_load_loses_nothing_and_runs_nothing_twice(berth_server):
    async with berth_server.client() as c:
        await create(c, "dep", drain_seconds=10, restart_mode="replace")
        sent: dict[str, str] = {}  # messageId -> the prefix that answered
        waits: list[float] = []
        stop = asyncio.Event()

        async def caller(n: int) -> None:
            i = 0
            while not stop.is_set() or i < 3:
                text = f"{'sleep:0.3 ' if i % 5 == 0 else ''}c{n}-{i}"
                mid = f"dep-c{n}-{i}"
                t0 = time.monotonic()
                r = await send(c, "dep", text, mid)
                waits.append(time.monotonic() - t0)
                assert r.status_code == 200, r.text
                prefix, _, echoed = reply_text(r.json()).partition(": ")
                assert echoed == text
                sent[mid] = prefix
                i += 1

        async def deploy_twice() -> list[dict[str, Any]]:
            out = []
            for v in ("echo2",):
                await asyncio.sleep(0.8)
                r = await c.post("/v1/workspaces/dep/deploy", json={"env": {"ECHO_PREFIX": v}})
                assert r.status_code == 202, r.text
                out.append(await _follow(c, "dep", r.json()))
            stop.set()
            return out

        *_, records = await asyncio.gather(*(caller(n) for n in range(4)), deploy_twice())
        assert [r["phase"] for r in records] == ["done"], records
        assert [r["mode"] for r in records] == ["replace"]
        assert [r["versions"] for r in records] == [{"from": 1, "to": 2}]
        assert [p["phase"] for p in records[0]["phases"]] == [
            "starting",
            "switch",
            "draining",
            "stopping",
        ]
        prefixes = set(sent.values())
        assert prefixes == {"echo", "echo2"}, prefixes  # both versions served
        info = (await c.get("/v1/workspaces/dep")).json()
        assert info["status"] == "online" and info["version"] == 2 and info["peer"] is None
        assert info["restart_count"] == 1 and info["crash_count"] == 0
        starts, dones = executions(info["state_dir"])
        assert all(starts[m] == 1 for m in sent), {m: starts[m] for m in sent if starts[m] != 1}
        assert all(dones[m] == 1 for m in sent), {m: dones[m] for m in sent if dones[m] != 1}
        dl = (await c.get("/v1/workspaces/dep/deliveries?limit=1000")).json()["deliveries"]
        assert {d["status"] for d in dl} == {"done"} and len(dl) == len(sent)
        print(f"\n[deploy] {len(sent)} messages, longest wait {max(waits):.2f} s")


async def test_a_task_from_the_old_version_continues_on_the_new_and_refusals(berth_server):
    async with berth_server.client() as c:
        await create(c, "cont", restart_mode="replace")
        r = await send(c, "cont", "task first", "cont-1")
        task = r.json()["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_COMPLETED"
        d = await c.post("/v1/workspaces/cont/deploy", json={"env": {"ECHO_PREFIX": "v2"}})
        rec = await _follow(c, "cont", d.json())
        assert rec["phase"] == "done", rec
        # the new version shares the state directory: it knows the old version's task
        got = await c.post(
            "/v1/workspaces/cont/a2a",
            json={"jsonrpc": "2.0", "id": 2, "method": "GetTask", "params": {"id": task["id"]}},
            headers={"a2a-version": "1.0"},
        )
        assert got.json()["result"]["id"] == task["id"], got.text
        assert got.json()["result"]["status"]["state"] == "TASK_STATE_COMPLETED"
        # a message in the same context is answered by the new version
        body = send_body("task again", "cont-2")
        body["params"]["message"]["contextId"] = task["contextId"]
        r2 = await c.post("/v1/workspaces/cont/a2a", json=body, headers={"a2a-version": "1.0"})
        t2 = r2.json()["result"]["task"]
        assert t2["contextId"] == task["contextId"] and reply_text(r2.json()) == "v2: task again"
        # refusals: a stop-first workspace, bad bodies, an unknown workspace
        await create(c, "plain", online=False)
        r = await c.post("/v1/workspaces/plain/deploy", json={"mode": "replace"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "restart_mode_stop_first"
        r = await c.post("/v1/workspaces/plain/deploy", json={"command": "not a list"})
        assert r.status_code == 422, r.text
        r = await c.post("/v1/workspaces/plain/restart", json={"mode": "sideways"})
        assert r.status_code == 422, r.text
        r = await c.post("/v1/workspaces/nope/deploy", json={})
        assert r.status_code == 404


async def test_a_canary_of_a_failing_version_rolls_back_by_itself(berth_server):
    async with berth_server.client() as c:
        await create(c, "can", restart_mode="replace")
        d = await c.post(
            "/v1/workspaces/can/deploy",
            json={"env": {"ECHO_BROKEN": "1"}, "canary": 50, "canary_seconds": 2},
        )
        assert d.status_code == 202, d.text
        rec = d.json()
        answered = {"ok": 0, "error": 0}
        while rec["phase"] not in ("done", "rolled_back", "failed"):
            r = await send(c, "can", "hello")
            assert r.status_code == 200, r.text
            answered["ok" if "result" in r.json() else "error"] += 1
            rec = (await c.get(f"/v1/workspaces/can/restarts/{rec['id']}")).json()
        assert rec["phase"] == "rolled_back", rec
        assert [p["phase"] for p in rec["phases"]] == ["starting", "canary", "rollback"]
        figs = rec["versions"]["figures"]
        assert figs["2"]["agent_errors"] > 0 and figs["1"]["agent_errors"] == 0, figs
        assert rec["versions"]["decision"]["result"] == "rollback"
        assert answered["error"] > 0 and answered["ok"] > 0, answered  # both versions served
        info = (await c.get("/v1/workspaces/can")).json()
        assert info["version"] == 1 and info["peer"] is None and info["status"] == "online"
        assert reply_text((await send(c, "can", "after")).json()) == "echo: after"
        print(f"\n[canary] {figs} -> {rec['versions']['decision']['why']}")


async def test_a_next_version_that_exits_leaves_the_serving_one_running(berth_server):
    """The next version exits before it registers: the deploy fails and the serving
    process is untouched (its pid alive, no crash, still answering). Its abandonment once
    stopped a copy of the serving version's record, whose pid was the serving process's."""
    async with berth_server.client() as c:
        await create(c, "exits", restart_mode="replace")
        pid = (await c.get("/v1/workspaces/exits")).json()["pid"]
        assert pid and os.path.exists(f"/proc/{pid}")
        broken = [sys.executable, "-c", "raise SystemExit(3)"]
        d = await c.post("/v1/workspaces/exits/deploy", json={"command": broken})
        assert d.status_code == 202, d.text
        rec = await _follow(c, "exits", d.json())
        assert rec["phase"] == "failed" and "exited with code 3" in rec["error"], rec
        await asyncio.sleep(0.5)  # an exit of the serving process would be seen by now
        info = (await c.get("/v1/workspaces/exits")).json()
        assert (info["status"], info["pid"], info["crash_count"]) == ("online", pid, 0), info
        assert info["version"] == 1 and info["peer"] is None
        assert os.path.exists(f"/proc/{pid}")
        assert reply_text((await send(c, "exits", "still here")).json()) == "echo: still here"


async def test_a_deploy_on_replicas_switches_every_replica(tmp_path):
    """Two replicas on PostgreSQL + Redis: callers send through the replica that does not
    own the workspace while the owner deploys; every message is answered once, and the
    other replica forwards to the new version after the switch."""
    from tests.e2e.test_replicas import _admin
    from tests.services import require_postgres, require_redis

    pg, redis = require_postgres(), require_redis()
    name = f"berth_dep_{uuid.uuid4().hex[:10]}"
    await _admin(pg, f"CREATE DATABASE {name}")
    env = {
        "BERTH_DATABASE_URL": pg.rsplit("/", 1)[0] + "/" + name,
        "BERTH_REDIS_URL": redis,
        "BERTH_REDIS_PREFIX": f"t-{name}:",
    }
    owner, other = (
        BerthServer(tmp_path / f"r{i}", env={**env, "BERTH_REPLICA_ID": f"r{i}"}) for i in (0, 1)
    )
    try:
        owner.start()
        other.start()
        async with owner.client() as c0, other.client() as c1:
            await create(c0, "rep", restart_mode="replace", drain_seconds=5)
            sent: dict[str, str] = {}
            stop = asyncio.Event()

            async def caller(n: int) -> None:
                i = 0
                while not stop.is_set() or i < 2:
                    mid = f"rep-{n}-{i}"
                    r = await send(c1, "rep", mid, mid)
                    assert r.status_code == 200, r.text
                    sent[mid] = reply_text(r.json()).partition(": ")[0]
                    i += 1

            async def deploy() -> dict[str, Any]:
                await asyncio.sleep(0.5)
                r = await c0.post("/v1/workspaces/rep/deploy", json={"env": {"ECHO_PREFIX": "v2"}})
                assert r.status_code == 202, r.text
                rec = await _follow(c0, "rep", r.json())
                await asyncio.sleep(0.5)
                stop.set()
                return rec

            *_, rec = await asyncio.gather(caller(0), caller(1), deploy())
            assert rec["phase"] == "done", rec
            assert set(sent.values()) == {"echo", "v2"}, sent
            after = reply_text((await send(c1, "rep", "after 2", "rep-after-2")).json())
            assert after == "v2: after 2"  # the other replica forwards to the new version
            info = (await c1.get("/v1/workspaces/rep")).json()
            assert info["version"] == 2 and info["peer"] is None
            starts, dones = executions(info["state_dir"])
            assert all(starts[m] == 1 and dones[m] == 1 for m in sent), (starts, dones)
            # a deploy asked of the replica that does not own the workspace is handed to
            # the owner (services/handoff.py): the new version runs there, once
            r = await c1.post("/v1/workspaces/rep/deploy", json={"env": {"ECHO_PREFIX": "v3"}})
            assert r.status_code == 202, r.text
            assert (await _follow(c1, "rep", r.json()))["phase"] == "done"
            after = reply_text((await send(c1, "rep", "after 3", "rep-after-3")).json())
            assert after == "v3: after 3"
            info = (await c1.get("/v1/workspaces/rep")).json()
            assert info["version"] == 3 and info["owner"] == "r0" and info["peer"] is None
            r = await c1.post("/v1/workspaces/rep/deploy/promote")
            assert r.status_code == 409 and "no_canary" in r.text  # the owner's answer
    finally:
        for s in (owner, other):
            s.stop()
            s.kill9()
        await _admin(pg, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
