"""Idempotency scoped to the caller, with a request fingerprint (issue 10)."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.harness import create, reply_text, send_body
from tests.security.conftest import RecordingAgent, bearer, external

pytestmark = pytest.mark.slow


async def test_message_ids_are_per_caller_and_bound_to_their_request(
    berth_server, agent: RecordingAgent
) -> None:
    async with berth_server.client() as c:
        a = await create(c, "a", online=False)
        x = await create(c, "x", online=False)
        await external(c, berth_server, agent, "b", allowed_callers=["a", "x"])
        async with httpx.AsyncClient(base_url=berth_server.url, timeout=30) as anon:

            async def call(token: str, text: str, rid: int = 1) -> httpx.Response:
                return await anon.post(
                    "/v1/workspaces/b/a2a",
                    headers=bearer(token),
                    json=send_body(text, "shared-id", rid=rid),
                )

            first = await call(a["token"], "a's secret question")
            assert (
                first.status_code == 200 and reply_text(first.json()) == "echo: a's secret question"
            )
            # same caller, same messageId, same request (another JSON-RPC id): the same reply
            again = await call(a["token"], "a's secret question", rid=2)
            assert reply_text(again.json()) == "echo: a's secret question"
            assert again.json()["id"] == 2 and again.headers["x-berth-replayed"] == "true"
            assert again.headers["x-berth-delivery-id"] == first.headers["x-berth-delivery-id"]
            # same caller, same messageId, another request: a clear error, never the old reply
            changed = await call(a["token"], "something else")
            err = changed.json()["error"]
            assert err["code"] == -32602 and "already used for another message" in err["message"]
            assert "result" not in changed.json()
            # another caller's messageId: its own delivery and its own reply
            other = await call(x["token"], "x asks")
            assert other.status_code == 200 and reply_text(other.json()) == "echo: x asks"
            assert other.headers["x-berth-delivery-id"] != first.headers["x-berth-delivery-id"]
            assert "x-berth-replayed" not in other.headers
            assert len(agent.requests) == 2  # a's once, x's once
            log = (await c.get("/v1/workspaces/b/deliveries")).json()["deliveries"]
            assert sorted(d["caller"] for d in log) == ["workspace:a", "workspace:x"]
            # a cancel by messageId reaches only the caller's own delivery (none queued here:
            # the cancel passes through to the agent, which answers for itself)
            r = await anon.post(
                "/v1/workspaces/b/a2a",
                headers=bearer(x["token"]),
                json={
                    "jsonrpc": "2.0",
                    "id": 3,
                    "method": "CancelTask",
                    "params": {"id": "shared-id"},
                },
            )
            assert r.status_code == 200
            assert all(
                d["status"] == "done"
                for d in (await c.get("/v1/workspaces/b/deliveries")).json()["deliveries"]
            )
