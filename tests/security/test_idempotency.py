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


async def test_the_http_json_binding_keeps_the_same_rules(berth_server) -> None:
    """Over HTTP+JSON: the allow-list, per-caller messageIds bound to their request (400
    instead of -32602), and a cancel that reaches only the caller's own queued message. The
    agent never registered, so every send waits in the log (X-Berth-Wait: 0 answers 202)."""
    async with berth_server.client() as c:
        r = await c.post(
            "/v1/workspaces",
            json={
                "name": "r",
                "runtime": "external",
                "allowed_callers": ["caller:r1", "caller:r2"],
            },
        )
        assert r.status_code == 201, r.text
        secret = {}
        for name in ("r1", "r2", "r3"):
            made = await c.post("/v1/credentials", json={"name": name})
            secret[name] = made.json()["secret"]
        async with httpx.AsyncClient(base_url=berth_server.url, timeout=30) as anon:

            async def rest(who: str, path: str, text: str | None = None) -> httpx.Response:
                body = None if text is None else send_body(text, "m")["params"]
                return await anon.post(
                    f"/v1/workspaces/r/a2a/rest/{path}",
                    json=body,
                    headers={**bearer(secret[who]), "x-berth-wait": "0"},
                )

            first = await rest("r1", "message:send", "one")
            assert first.status_code == 202, first.text
            d1 = first.json()["delivery_id"]
            again = await rest("r1", "message:send", "one")
            assert again.status_code == 202 and again.json()["delivery_id"] == d1
            # the same request over JSON-RPC (v1.0's params are the HTTP+JSON body): the same
            rpc = await anon.post(
                "/v1/workspaces/r/a2a",
                json=send_body("one", "m"),
                headers={**bearer(secret["r1"]), "x-berth-wait": "0"},
            )
            assert rpc.status_code == 202 and rpc.json()["delivery_id"] == d1
            changed = await rest("r1", "message:send", "two")
            assert changed.status_code == 400
            err = changed.json()["error"]
            assert "already used for another message" in err["message"]
            assert err["details"][0]["reason"] == "MESSAGE_ID_REUSED"
            other = await rest("r2", "message:send", "r2's own")
            assert other.status_code == 202 and other.json()["delivery_id"] != d1
            d2 = other.json()["delivery_id"]
            assert (await rest("r3", "message:send", "not allowed")).status_code == 403
            # r2's cancel of messageId m cancels r2's message, never r1's
            canceled = await rest("r2", "tasks/m:cancel")
            assert canceled.status_code == 200, canceled.text
            assert (await c.get(f"/v1/deliveries/{d2}")).json()["status"] == "canceled"
            assert (await c.get(f"/v1/deliveries/{d1}")).json()["status"] == "queued"
            # naming r1's delivery id does not reach it either (it goes to the absent agent)
            assert (await rest("r2", f"tasks/{d1}:cancel")).status_code == 503
            assert (await c.get(f"/v1/deliveries/{d1}")).json()["status"] == "queued"
            log = (await c.get("/v1/workspaces/r/deliveries")).json()["deliveries"]
            assert sorted(d["caller"] for d in log) == ["caller:r1", "caller:r2"]
