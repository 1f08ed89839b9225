"""Issue #5: streams through berth, across restarts; cancel of queued deliveries."""

import asyncio
import json
import time
from pathlib import Path

import pytest

from tests.e2e.harness import create, executions, send, send_body, wait_status

pytestmark = pytest.mark.slow


def stream_body(text: str, mid: str, v03: bool = False) -> dict:
    b = send_body(text, mid, v03=v03)
    b["method"] = "message/stream" if v03 else "SendStreamingMessage"
    return b


async def read_stream(c, ref: str, body: dict, v03: bool = False):
    """(events, keep_alives, seconds to first event) of one streamed call."""
    headers = {} if v03 else {"a2a-version": "1.0"}
    events, keep_alives, first = [], 0, None
    t0 = time.monotonic()
    async with c.stream("POST", f"/v1/workspaces/{ref}/a2a", json=body, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                first = first or time.monotonic() - t0
                events.append(json.loads(line[6:]))
            elif line.startswith(":"):
                keep_alives += 1
    return events, keep_alives, first


def final_text(events) -> str:
    text = json.dumps(events[-1])
    return text


async def test_stream_v1_and_v03(berth_server):
    async with berth_server.client() as c:
        await create(c, "streamy")
        events, _, _ = await read_stream(c, "streamy", stream_body("hello stream", "st-1"))
        assert "echo: hello stream" in final_text(events) and "result" in events[-1]
        events3, _, _ = await read_stream(
            c, "streamy", stream_body("old stream", "st-2", v03=True), v03=True
        )
        assert "echo: old stream" in final_text(events3)
        d = (await c.get("/v1/workspaces/streamy/deliveries")).json()["deliveries"]
        assert [x["status"] for x in d] == ["done", "done"] and d[0][
            "method"
        ] == "SendStreamingMessage"


async def test_a_stream_survives_a_restart_of_its_workspace(tmp_path):
    from tests.e2e.harness import BerthServer

    server = BerthServer(tmp_path / "s", env={"BERTH_STREAM_KEEP_ALIVE": "0.5"}).start()
    try:
        async with server.client() as c:
            await create(c, "stream-restart", drain_seconds=0.5)
            reader = asyncio.create_task(
                read_stream(c, "stream-restart", stream_body("sleep:2 across", "sr-1"))
            )
            await asyncio.sleep(0.6)
            r = await c.post(
                "/v1/workspaces/stream-restart/restart", json={"reason": "cut the stream"}
            )
            assert r.status_code == 202
            events, keep_alives, _ = await reader
            assert "echo: sleep:2 across" in final_text(events)
            assert keep_alives >= 1
            info = await wait_status(c, "stream-restart", "online")
            starts, dones = executions(info["state_dir"])
            assert dones["sr-1"] == 1 and starts["sr-1"] == 2  # cut once, then run to the end
            rec = (await c.get(f"/v1/workspaces/stream-restart/restarts/{r.json()['id']}")).json()
            assert "sr-1" in rec["drain_report"]["unfinished"]
    finally:
        server.stop()


async def test_a_disconnected_stream_is_still_delivered(berth_server):
    async with berth_server.client() as c:
        await create(c, "dropper")
        async with c.stream(
            "POST",
            "/v1/workspaces/dropper/a2a",
            json=stream_body("sleep:0.5 dropped", "drop-1"),
            headers={"a2a-version": "1.0"},
        ) as r:
            did = r.headers["x-berth-delivery-id"]
        for _ in range(100):
            d = (await c.get(f"/v1/deliveries/{did}")).json()
            if d["status"] == "done":
                break
            await asyncio.sleep(0.05)
        assert d["status"] == "done" and "echo: sleep:0.5 dropped" in json.dumps(d["reply"])


async def test_cancel_of_a_queued_delivery_never_reaches_the_agent(berth_server):
    async with berth_server.client() as c:
        await create(c, "canceler")
        await c.post("/v1/workspaces/canceler/pause")
        r = await send(c, "canceler", "never", "cancel-me", wait=0)
        did = r.json()["delivery_id"]
        cancel = await c.post(
            "/v1/workspaces/canceler/a2a",
            headers={"a2a-version": "1.0"},
            json={"jsonrpc": "2.0", "id": 9, "method": "CancelTask", "params": {"id": "cancel-me"}},
        )
        res = cancel.json()["result"]
        assert (
            res["status"]["state"] == "TASK_STATE_CANCELED"
            and res["metadata"]["berth"]["delivery_id"] == did
        )
        await c.post("/v1/workspaces/canceler/resume")
        info = await wait_status(c, "canceler", "online")
        await asyncio.sleep(0.5)
        assert (await c.get(f"/v1/deliveries/{did}")).json()["status"] == "canceled"
        starts, _ = executions(info["state_dir"])
        assert starts["cancel-me"] == 0


async def _rpc(c, ref: str, method: str, params: dict, rid: int = 5) -> dict:
    r = await c.post(
        f"/v1/workspaces/{ref}/a2a",
        json={"jsonrpc": "2.0", "id": rid, "method": method, "params": params},
        headers={"a2a-version": "1.0"},
    )
    assert r.status_code == 200, r.text
    return r.json()


async def test_get_task_after_a_restart_done_or_pointing_to_its_successor(tmp_path):
    """A task finished before a restart is still there after it; a task the restart cut is
    closed (canceled) with `berth.restarted_as` naming the task its redelivery ran as."""
    from tests.e2e.harness import BerthServer

    server = BerthServer(tmp_path / "s", env={"BERTH_STREAM_KEEP_ALIVE": "0.5"}).start()
    try:
        async with server.client() as c:
            await create(c, "tasks", drain_seconds=0.3)
            done = (
                await _rpc(
                    c, "tasks", "SendMessage", send_body("task finished first", "tr-0")["params"]
                )
            )["result"]["task"]
            first_id: list[str] = []

            async def stream() -> list[dict]:
                events = []
                async with c.stream(
                    "POST",
                    "/v1/workspaces/tasks/a2a",
                    headers={"a2a-version": "1.0"},
                    json=stream_body("task sleep:2 cut by a restart", "tr-1"),
                ) as r:
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            events.append(json.loads(line[6:]))
                            if "task" in events[-1].get("result", {}) and not first_id:
                                first_id.append(events[-1]["result"]["task"]["id"])
                return events

            reader = asyncio.create_task(stream())
            while not first_id:
                await asyncio.sleep(0.05)
            r = await c.post("/v1/workspaces/tasks/restart", json={"reason": "cut the task"})
            assert r.status_code == 202
            events = await reader
            final = events[-1]["result"]
            assert final["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"
            new_id = final["statusUpdate"]["taskId"]
            assert new_id != first_id[0]  # the redelivery ran as a new task

            old = (await _rpc(c, "tasks", "GetTask", {"id": first_id[0]}))["result"]
            assert old["status"]["state"] == "TASK_STATE_CANCELED"
            assert old["metadata"]["berth.restarted_as"] == new_id
            assert (await _rpc(c, "tasks", "GetTask", {"id": new_id}))["result"]["status"][
                "state"
            ] == "TASK_STATE_COMPLETED"
            before = (await _rpc(c, "tasks", "GetTask", {"id": done["id"]}))["result"]
            assert before["status"]["state"] == "TASK_STATE_COMPLETED"
            listed = (await _rpc(c, "tasks", "ListTasks", {}))["result"]["tasks"]
            assert {t["id"] for t in listed} >= {done["id"], first_id[0], new_id}
    finally:
        server.stop()


async def test_cancel_of_a_running_task_reaches_the_agent(berth_server):
    async with berth_server.client() as c:
        await create(c, "canceler")
        info = await wait_status(c, "canceler", "online")
        task_id: list[str] = []

        async def stream() -> list[dict]:
            events = []
            async with c.stream(
                "POST",
                "/v1/workspaces/canceler/a2a",
                headers={"a2a-version": "1.0"},
                json=stream_body("task sleep:10 stop me", "cx-1"),
            ) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        if not task_id:
                            task_id.append(events[-1]["result"]["task"]["id"])
            return events

        reader = asyncio.create_task(stream())
        while not task_id:
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        canceled = await _rpc(c, "canceler", "CancelTask", {"id": task_id[0]})
        assert canceled["result"]["status"]["state"] == "TASK_STATE_CANCELED", canceled
        events = await asyncio.wait_for(reader, 10)
        assert time.monotonic() - t0 < 5  # it stopped the work, not waited out the 10 s
        assert events[-1]["result"]["statusUpdate"]["status"]["state"] == "TASK_STATE_CANCELED"
        log = (Path(info["state_dir"]) / "executions.log").read_text().split("\n")
        assert "start cx-1" in log and "cancel cx-1" in log and "done cx-1" not in log
        did = (await c.get("/v1/workspaces/canceler/deliveries")).json()["deliveries"][0]
        assert (
            did["status"] == "done"
        )  # the agent answered (with a canceled task): nothing to redeliver
