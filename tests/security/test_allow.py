"""Who may call whom (issue 10): A's credentials against B on every A2A method and on the
card, refused with 403 and a JSON-RPC error naming the reason, before the agent is
contacted; once B allows A, A's calls go through, and each delivery records its caller,
which the agent also gets in X-Berth-Caller."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.harness import create, reply_text, send_body
from tests.security.conftest import RecordingAgent, bearer, external

pytestmark = pytest.mark.slow

TASK = {"id": "t-1"}
CALLS = [
    ("SendMessage", None),
    ("SendStreamingMessage", None),
    ("message/send", None),
    ("message/stream", None),
    ("GetTask", TASK),
    ("tasks/get", TASK),
    ("CancelTask", TASK),
    ("tasks/cancel", TASK),
    ("SubscribeToTask", TASK),
    ("tasks/resubscribe", TASK),
    ("CreateTaskPushNotificationConfig", {"taskId": "t-1", "config": {"url": "http://x"}}),
    ("tasks/pushNotificationConfig/set", {"taskId": "t-1"}),
    ("ListTaskPushNotificationConfig", {"id": "t-1"}),
]


def _body(method: str, params: dict | None, mid: str) -> dict:
    if params is None:
        doc = send_body("from a", mid)
        doc["method"] = method
        return doc
    return {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}


async def test_a_cannot_call_b_until_b_allows_it(berth_server, agent: RecordingAgent) -> None:
    async with berth_server.client() as c:
        a = await create(c, "a", online=False)
        await external(c, berth_server, agent, "b")
        async with httpx.AsyncClient(base_url=berth_server.url, timeout=30) as anon:
            for i, (method, params) in enumerate(CALLS):
                r = await anon.post(
                    "/v1/workspaces/b/a2a",
                    headers=bearer(a["token"]),
                    json=_body(method, params, f"m{i}"),
                )
                assert r.status_code == 403, (method, r.status_code, r.text)
                err = r.json()["error"]
                assert err["data"]["reason"] == "caller_not_allowed", method
                assert "workspace:a is not allowed to call workspace b" in err["message"]
                assert r.json()["id"] is None  # the body was not read
            for path in (
                "/v1/workspaces/b/.well-known/agent-card.json",
                "/v1/workspaces/b/a2a/.well-known/agent-card.json",
            ):
                card = await anon.get(path, headers=bearer(a["token"]))
                assert (
                    card.status_code == 403 and card.json()["error"]["code"] == "caller_not_allowed"
                )
            assert agent.requests == []  # nothing reached the agent
            assert (await c.get("/v1/workspaces/b/deliveries")).json()["deliveries"] == []

            ok = await c.post("/v1/workspaces/b/allow", json={"callers": ["a"]})
            assert ok.json()["allowed_callers"] == ["workspace:a"]
            headers = bearer(a["token"]) | {"x-berth-caller": "operator"}  # a forged claim
            r = await anon.post(
                "/v1/workspaces/b/a2a", headers=headers, json=send_body("hi", "ok-1")
            )
            assert r.status_code == 200 and reply_text(r.json()) == "echo: hi"
            card = await anon.get(
                "/v1/workspaces/b/.well-known/agent-card.json", headers=bearer(a["token"])
            )
            assert card.status_code == 200 and card.json()["name"] == "rec"

            seen, _ = agent.requests[-1]
            assert seen["x-berth-caller"] == "workspace:a"  # berth's, not the forged one
            log = (await c.get("/v1/workspaces/b/deliveries")).json()["deliveries"]
            assert [(d["message_id"], d["caller"]) for d in log] == [("ok-1", "workspace:a")]
            # the operator's own calls are recorded as the operator's
            await c.post(
                "/v1/workspaces/b/a2a", json=send_body("op", "op-1"), headers={"a2a-version": "1.0"}
            )
            assert agent.requests[-1][0]["x-berth-caller"] == "operator"

            # denied again: refused again
            await c.post("/v1/workspaces/b/deny", json={"callers": ["a"]})
            r = await anon.post(
                "/v1/workspaces/b/a2a", headers=bearer(a["token"]), json=send_body("x", "ok-2")
            )
            assert r.status_code == 403


async def test_allowed_at_create_and_wildcard(berth_server, agent: RecordingAgent) -> None:
    async with berth_server.client() as c:
        a = await create(c, "a2", online=False)
        other = await create(c, "other", online=False)
        await external(c, berth_server, agent, "b2", allowed_callers=["a2"])
        async with httpx.AsyncClient(base_url=berth_server.url, timeout=30) as anon:

            async def call(token: str, mid: str) -> int:
                r = await anon.post(
                    "/v1/workspaces/b2/a2a", headers=bearer(token), json=send_body("x", mid)
                )
                return r.status_code

            assert await call(a["token"], "1") == 200
            assert await call(other["token"], "2") == 403
            await c.post("/v1/workspaces/b2/allow", json={"callers": ["*"]})
            assert await call(other["token"], "3") == 200
            assert await call("bwc_unknown", "4") == 401  # '*' is any caller credential, not anyone
            # removing a workspace ends its credentials (and its grants elsewhere)
            assert (await c.delete("/v1/workspaces/a2")).status_code == 200
            assert await call(a["token"], "5") == 401
