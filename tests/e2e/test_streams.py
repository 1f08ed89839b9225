"""Issue #5: streams through berth, across restarts; cancel of queued deliveries."""

import asyncio
import json
import time

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
        events3, _, _ = await read_stream(c, "streamy", stream_body("old stream", "st-2", v03=True), v03=True)
        assert "echo: old stream" in final_text(events3)
        d = (await c.get("/v1/workspaces/streamy/deliveries")).json()["deliveries"]
        assert [x["status"] for x in d] == ["done", "done"] and d[0]["method"] == "SendStreamingMessage"


async def test_a_stream_survives_a_restart_of_its_workspace(tmp_path):
    from tests.e2e.harness import BerthServer

    server = BerthServer(tmp_path / "s", env={"BERTH_STREAM_KEEP_ALIVE": "0.5"}).start()
    try:
        async with server.client() as c:
            await create(c, "stream-restart", drain_seconds=0.5)
            reader = asyncio.create_task(read_stream(c, "stream-restart", stream_body("sleep:2 across", "sr-1")))
            await asyncio.sleep(0.6)
            r = await c.post("/v1/workspaces/stream-restart/restart", json={"reason": "cut the stream"})
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
        async with c.stream("POST", "/v1/workspaces/dropper/a2a", json=stream_body("sleep:0.5 dropped", "drop-1"),
                            headers={"a2a-version": "1.0"}) as r:
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
        cancel = await c.post("/v1/workspaces/canceler/a2a", headers={"a2a-version": "1.0"},
                              json={"jsonrpc": "2.0", "id": 9, "method": "CancelTask", "params": {"id": "cancel-me"}})
        res = cancel.json()["result"]
        assert res["status"]["state"] == "TASK_STATE_CANCELED" and res["metadata"]["berth"]["delivery_id"] == did
        await c.post("/v1/workspaces/canceler/resume")
        info = await wait_status(c, "canceler", "online")
        await asyncio.sleep(0.5)
        assert (await c.get(f"/v1/deliveries/{did}")).json()["status"] == "canceled"
        starts, _ = executions(info["state_dir"])
        assert starts["cancel-me"] == 0
