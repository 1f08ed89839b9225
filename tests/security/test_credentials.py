"""Credentials by role (issue 10): a caller credential never registers, heartbeats or moves
an agent; credentials are listed without secrets, rotated and revoked."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.harness import create, reply_text, send_body
from tests.security.conftest import RecordingAgent, bearer, external

pytestmark = pytest.mark.slow


async def test_a_caller_credential_cannot_register_heartbeat_or_move_an_agent(
    berth_server, agent: RecordingAgent
) -> None:
    impostor = RecordingAgent()
    await impostor.start()
    try:
        async with berth_server.client() as c:
            ws = await external(c, berth_server, agent, "target")
            caller_token = ws["token"]
            # the credential shown at create is a caller's: refused for register and heartbeat
            r = await impostor.register(berth_server.url, caller_token)
            assert r.status_code == 403 and r.json()["error"]["code"] == "wrong_role", r.text
            async with httpx.AsyncClient(base_url=berth_server.url) as anon:
                hb = await anon.post("/v1/agents/heartbeat", headers=bearer(caller_token), json={})
                assert hb.status_code == 403 and hb.json()["error"]["code"] == "wrong_role"
                # nor can the operator's token act as an agent
                r = await impostor.register(berth_server.url, "bad_test_admin_token")
                assert r.status_code == 403
                # an agent credential cannot call workspaces
                r = await anon.post(
                    "/v1/workspaces/target/a2a",
                    headers=bearer(ws["agent_token"]),
                    json=send_body("hi", "m-agent"),
                )
                assert r.status_code == 403 and r.json()["error"]["data"]["reason"] == "wrong_role"
            # the workspace still points at the real agent: its reply, not the impostor's
            shown = (await c.get("/v1/workspaces/target")).json()
            assert shown["url"] == agent.url
            r = await c.post(
                "/v1/workspaces/target/a2a",
                json=send_body("still me", "m-1"),
                headers=bearer("x") | {"authorization": "Bearer bad_test_admin_token"},
            )
            assert r.status_code == 200 and reply_text(r.json()) == "echo: still me"
            assert impostor.requests == [] and len(agent.requests) == 1
    finally:
        await impostor.stop()


async def test_credentials_listed_without_secrets_rotated_and_revoked(
    berth_server, agent: RecordingAgent
) -> None:
    async with berth_server.client() as c:
        await external(c, berth_server, agent, "svc")
        a = await create(c, "alpha", online=False)
        old = a["token"]
        listed = await c.get("/v1/credentials")
        assert listed.status_code == 200
        subjects = {x["subject"]: x for x in listed.json()["credentials"]}
        assert {"workspace:alpha", "workspace:svc", "agent:svc"} <= set(subjects)
        assert old not in listed.text and "secret" not in listed.text
        assert subjects["workspace:alpha"]["role"] == "caller"
        assert subjects["agent:svc"]["role"] == "agent"

        assert (await c.post("/v1/workspaces/svc/allow", json={"callers": ["alpha"]})).is_success
        async with httpx.AsyncClient(base_url=berth_server.url, timeout=30) as anon:

            async def call(token: str, mid: str) -> httpx.Response:
                return await anon.post(
                    "/v1/workspaces/svc/a2a", headers=bearer(token), json=send_body("x", mid)
                )

            assert (await call(old, "r-1")).status_code == 200
            rotated = await c.post("/v1/credentials/workspace:alpha/rotate")
            assert rotated.status_code == 200, rotated.text
            new = rotated.json()["secret"]
            assert new != old and rotated.json()["rotated_at"] is not None
            refused = await call(old, "r-2")
            assert refused.status_code == 401
            assert refused.json()["error"]["data"]["reason"] == "invalid_token"
            assert (await call(new, "r-3")).status_code == 200

            revoked = await c.post(f"/v1/credentials/{subjects['workspace:alpha']['id']}/revoke")
            assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
            assert (await call(new, "r-4")).status_code == 401
            again = await c.post("/v1/credentials/workspace:alpha/rotate")
            assert again.status_code == 409  # revoked stays revoked

            # a named caller credential, allowed by name
            made = await c.post("/v1/credentials", json={"name": "ci"})
            assert made.status_code == 201 and made.json()["subject"] == "caller:ci"
            ci = made.json()["secret"]
            assert (await call(ci, "ci-1")).status_code == 403
            await c.post("/v1/workspaces/svc/allow", json={"callers": ["caller:ci"]})
            assert (await call(ci, "ci-2")).status_code == 200

            # the external agent's credential rotates too: the old one stops registering
            rot = await c.post("/v1/credentials/agent:svc/rotate")
            assert (await agent.register(berth_server.url, rot.json()["secret"])).is_success
            stale = await anon.post("/v1/agents/heartbeat", headers=bearer("bwa_not-it"), json={})
            assert stale.status_code == 401
            # credentials cannot use the management API
            r = await anon.get("/v1/credentials", headers=bearer(ci))
            assert r.status_code == 403
