"""Issue #5: the rest of A2A through berth: errors before and during a stream, resubscribe,
push-notification config, and reads forwarded as they are."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.e2e.harness import BOTH_PATHS, BerthServer, create, send_body

pytestmark = pytest.mark.slow
V1 = {"a2a-version": "1.0"}


def stream_body(text: str, mid: str) -> dict:
    return {**send_body(text, mid), "method": "SendStreamingMessage"}


@BOTH_PATHS
async def test_up_front_stream_errors_are_plain_jsonrpc_errors(berth_server):
    async with berth_server.client() as c:
        await create(c, "errs")
        bad = {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "SendStreamingMessage",
            "params": {"message": "not an object"},
        }
        r = await c.post("/v1/workspaces/errs/a2a", json=bad, headers=V1)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        assert r.json()["id"] == 3 and r.json()["error"]["code"] == -32602
        r = await c.post("/v1/workspaces/nobody/a2a", json=stream_body("hi", "e-1"), headers=V1)
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
        assert r.json()["error"]["code"] == -32001
        r = await c.post("/v1/workspaces/errs/a2a", content=b"{not json", headers=V1)
        assert r.json()["error"]["code"] == -32700


async def test_a_stream_whose_message_kills_its_agent_ends_with_an_sse_error_event(tmp_path):
    server = BerthServer(tmp_path / "b", env={"BERTH_MAX_ATTEMPTS": "1"}).start()
    try:
        async with server.client() as c:
            await create(c, "poison-stream")
            events = []
            async with c.stream(
                "POST",
                "/v1/workspaces/poison-stream/a2a",
                json=stream_body("crash now", "ps-1"),
                headers=V1,
            ) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith(
                    "text/event-stream"
                )
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
            assert len(events) == 1 and events[0]["id"] == 1
            err = events[0]["error"]
            assert err["code"] == -32603 and err["data"]["berth"]["status"] == "dead"
    finally:
        server.stop()


@BOTH_PATHS
async def test_resubscribe_and_push_config_are_forwarded(berth_server):
    async with berth_server.client() as c:
        await create(c, "subs")
        task_id: list[str] = []

        async def first_stream() -> None:
            async with c.stream(
                "POST",
                "/v1/workspaces/subs/a2a",
                json=stream_body("task sleep:1.5 sub", "sb-1"),
                headers=V1,
            ) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and not task_id:
                        task_id.append(json.loads(line[6:])["result"]["task"]["id"])

        original = asyncio.create_task(first_stream())
        while not task_id:
            await asyncio.sleep(0.05)
        events = []
        async with c.stream(
            "POST",
            "/v1/workspaces/subs/a2a",
            headers=V1,
            json={
                "jsonrpc": "2.0",
                "id": 4,
                "method": "SubscribeToTask",
                "params": {"id": task_id[0]},
            },
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
        await original
        assert events and all(e["id"] == 4 for e in events)
        assert events[-1]["result"]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"
        # the echo agent declares no push notifications: the agent's own error comes back
        r = await c.post(
            "/v1/workspaces/subs/a2a",
            headers=V1,
            json={
                "jsonrpc": "2.0",
                "id": 5,
                "method": "CreateTaskPushNotificationConfig",
                "params": {"taskId": task_id[0], "config": {"url": "http://127.0.0.1:9/hook"}},
            },
        )
        assert r.status_code == 200 and r.json()["id"] == 5 and "error" in r.json()
        r = await c.post(
            "/v1/workspaces/subs/a2a",
            json={"jsonrpc": "2.0", "id": 6, "method": "tasks/get", "params": {"id": task_id[0]}},
        )
        assert r.json()["result"]["status"]["state"] == "completed"  # v0.3 shapes for a v0.3 read
