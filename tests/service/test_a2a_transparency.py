"""Issue 11 at the service layer: what the caller sent reaches the agent as sent (Content-
Type, A2A-Version, A2A-Extensions), and a streaming send the agent refuses up front is
answered with that refusal, not a one-event stream."""

from __future__ import annotations

import json
from typing import Any

from berth.ports import AgentReply
from berth.wire import rpc_error
from tests.service.fakes import Agent, world

SENT = {
    "content-type": "application/json; charset=utf-8",
    "a2a-version": "1.0",
    "a2a-extensions": "https://example.com/ext/v1",
    "x-berth-wait": "5",
    "authorization": "Bearer secret",  # berth's own credential: never passed on
    "x-berth-caller": "caller:forged",  # berth's word on who calls, never the caller's
}


def _record(w: Any) -> list[dict[str, str]]:
    seen: list[dict[str, str]] = []
    post = w.agents.post

    async def recording(url: str, body: bytes, headers: dict[str, str], timeout: float):
        seen.append(dict(headers))
        return await post(url, body, headers, timeout)

    w.agents.post = recording
    return seen


def _body(method: str, params: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()


MSG = {"message": {"role": "ROLE_USER", "messageId": "m1", "parts": [{"text": "hi"}]}}


async def test_a_send_and_a_pass_through_reach_the_agent_with_the_callers_headers() -> None:
    async with world() as w:
        ws = await w.create("a")
        seen = _record(w)
        reply = await w.c.proxy.handle(ws, _body("SendMessage", MSG), SENT)
        assert reply.status == 200
        got = await w.c.proxy.handle(ws, _body("GetTask", {"id": "t"}), SENT)
        assert got.status == 200
        wanted = {k: SENT[k] for k in ("content-type", "a2a-version", "a2a-extensions")}
        wanted["x-berth-caller"] = "operator"  # issue 10: who called, as berth knows it
        assert seen == [wanted, wanted]


async def test_a_wrong_media_type_reaches_the_agent_unchanged() -> None:
    async with world() as w:
        ws = await w.create("a")
        seen = _record(w)
        await w.c.proxy.handle(ws, _body("SendMessage", MSG), {"content-type": "text/plain"})
        assert seen[0]["content-type"] == "text/plain"
        # a caller that sends none: berth says JSON (as before)
        await w.c.proxy.handle(ws, _body("GetTask", {"id": "t"}), {})
        assert seen[1] == {"content-type": "application/json", "x-berth-caller": "operator"}


async def test_an_up_front_refusal_of_a_streaming_send_is_a_plain_error() -> None:
    async def refuse(agent: Agent, doc: dict[str, Any]) -> AgentReply:
        return AgentReply(200, rpc_error(doc["id"], -32001, "Task not found"), "application/json")

    async with world() as w:
        ws = await w.create("a")
        w.agent(ws).handler = refuse
        reply = await w.c.proxy.handle(ws, _body("SendStreamingMessage", MSG), {})
        assert reply.stream is None, "a plain refusal must not become an SSE stream"
        assert (reply.status, reply.content_type) == (200, "application/json")
        assert json.loads(reply.body)["error"]["code"] == -32001
        # the same messageId again: the stored refusal, still plain, marked replayed
        again = await w.c.proxy.handle(ws, _body("SendStreamingMessage", MSG), {})
        assert again.stream is None and again.headers["x-berth-replayed"] == "true"
        assert json.loads(again.body)["error"]["code"] == -32001
