"""Hostile input (issue 10): a body limit on every endpoint, and reply headers that are
always valid whatever the messageId."""

from __future__ import annotations

from urllib.parse import unquote

import httpx
import pytest

from tests.e2e.harness import ADMIN, send_body
from tests.security.conftest import RecordingAgent, bearer, external

pytestmark = pytest.mark.slow

LIMIT = 1024 * 1024  # BERTH_MAX_BODY_BYTES' default


async def test_every_endpoint_refuses_an_oversized_body(
    berth_server, agent: RecordingAgent
) -> None:
    async with berth_server.client() as c:
        ws = await external(c, berth_server, agent, "big")
        spec = (await c.get("/openapi.json")).json()
        targets = [
            (
                m.upper(),
                p.replace("{ref}", "big")
                .replace("{delivery_id}", "x")
                .replace("{restart_id}", "x")
                .replace("{ref}", "x"),
            )
            for p, ops in spec["paths"].items()
            for m in ops
            if m in ("post", "put", "patch")
        ]
        targets += [("POST", "/v1/workspaces/big/a2a"), ("POST", "/ui/login")]
        assert ("POST", "/v1/agents/register") in targets and len(targets) > 10
        huge = b'{"pad": "' + b"x" * (LIMIT + 10) + b'"}'
        async with httpx.AsyncClient(base_url=berth_server.url, timeout=60) as anon:
            for method, path in targets:
                for token in (ADMIN, ws["agent_token"]):
                    r = await anon.request(
                        method,
                        path,
                        content=huge,
                        headers={
                            "authorization": f"Bearer {token}",
                            "content-type": "application/json",
                        },
                    )
                    assert r.status_code == 413, (method, path, r.status_code, r.text[:200])

            # a body with no Content-Length (chunked) is cut off as it grows, too

            async def chunks():
                for _ in range(70):
                    yield b"x" * 1_000_000

            r = await anon.post(
                "/v1/agents/register", content=chunks(), headers=bearer(ws["agent_token"])
            )
            assert r.status_code == 413
            # the 60 MB card of the issue: refused, and the stored card unchanged
            card = {"url": agent.url, "agent_card": {"name": "rec", "pad": "y" * 60_000_000}}
            r = await anon.post("/v1/agents/register", json=card, headers=bearer(ws["agent_token"]))
            assert r.status_code == 413
        shown = await c.get("/v1/workspaces/big/.well-known/agent-card.json")
        assert shown.json()["name"] == "rec" and "pad" not in shown.json()


async def test_a_message_id_that_is_no_header_value_still_gets_its_reply(
    berth_server, agent: RecordingAgent
) -> None:
    async with berth_server.client() as c:
        await external(c, berth_server, agent, "ids")
        for mid in ["ünïcödé-✓-日本", "latin1-é", "emoji-🚢", 'quote"and\\back']:
            r = await c.post(
                "/v1/workspaces/ids/a2a", json=send_body("hi", mid), headers={"a2a-version": "1.0"}
            )
            assert r.status_code == 200, (mid, r.text)
            assert r.json()["result"]["message"]["parts"][0]["text"] == "echo: hi"
            got = r.headers.get("x-berth-message-id") or unquote(
                r.headers["x-berth-message-id-encoded"]
            )
            assert got == mid
            # and again: the replay is answered the same way
            r2 = await c.post(
                "/v1/workspaces/ids/a2a", json=send_body("hi", mid), headers={"a2a-version": "1.0"}
            )
            assert r2.status_code == 200 and r2.headers["x-berth-replayed"] == "true", mid


async def test_control_characters_in_a_message_id_are_refused_before_anything_runs(
    berth_server, agent: RecordingAgent
) -> None:
    async with berth_server.client() as c:
        await external(c, berth_server, agent, "ctl")
        # an external workspace whose agent never registered: its card is unknown, so the
        # HTTP+JSON binding takes the send (and would hold it)
        made = await c.post("/v1/workspaces", json={"name": "ctlr", "runtime": "external"})
        assert made.status_code == 201
        for mid in ["cr\rlf", "lf\nonly", "nul\x00byte", "tab\tx", "del\x7f"]:
            for path, body in (
                ("/v1/workspaces/ctl/a2a", send_body("hi", mid)),
                ("/v1/workspaces/ctlr/a2a/rest/message:send", send_body("hi", mid)["params"]),
            ):
                r = await c.post(path, json=body, headers={"a2a-version": "1.0"})
                text = r.text
                assert "control characters" in text, (mid, path, text)
                if path.endswith("/a2a"):
                    assert r.status_code == 200 and r.json()["error"]["code"] == -32602
                else:  # the HTTP+JSON binding: 400
                    assert r.status_code == 400, (mid, text)
        assert agent.requests == []
        for ws in ("ctl", "ctlr"):
            assert (await c.get(f"/v1/workspaces/{ws}/deliveries")).json()["deliveries"] == []
