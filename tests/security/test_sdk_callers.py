"""The SDK's stored replies are the caller's too: berth keys its log by (caller,
messageId), so an SDK agent must not answer one caller's message with another caller's
reply to the same messageId (the agent learns the caller from X-Berth-Caller)."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.harness import create, reply_text, send_body
from tests.security.conftest import bearer

pytestmark = pytest.mark.slow


async def test_an_sdk_agent_answers_each_caller_for_its_own_message(berth_server) -> None:
    async with berth_server.client() as c:
        a = await create(c, "sa", online=False)
        x = await create(c, "sx", online=False)
        await create(c, "sb", allowed_callers=["sa", "sx"])  # the SDK's echo agent
        async with httpx.AsyncClient(base_url=berth_server.url, timeout=30) as anon:

            async def call(token: str, text: str, rid: int = 1) -> httpx.Response:
                r = await anon.post(
                    "/v1/workspaces/sb/a2a",
                    headers=bearer(token),
                    json=send_body(text, "shared", rid=rid),
                )
                assert r.status_code == 200, r.text
                return r

            assert reply_text((await call(a["token"], "a's secret")).json()) == "echo: a's secret"
            assert reply_text((await call(x["token"], "x asks")).json()) == "echo: x asks"
            # the operator's own message with that messageId is a third one
            op = await c.post(
                "/v1/workspaces/sb/a2a",
                headers={"a2a-version": "1.0"},
                json=send_body("mine", "shared"),
            )
            assert reply_text(op.json()) == "echo: mine"
            # the same caller's retry is still answered from the log, once
            again = await call(a["token"], "a's secret", rid=2)
            assert again.headers["x-berth-replayed"] == "true"
            assert reply_text(again.json()) == "echo: a's secret"
