"""SSE event names survive berth (issue 11): an agent's `event: error` reaches the caller
with its name, through the aiohttp client's parsing and berth's framing."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestServer

from berth.adapters.agent_http import HttpAgentClient
from berth.services.streams import sse


def test_sse_framing_with_and_without_a_name() -> None:
    assert sse(b'{"a": 1}') == b'data: {"a": 1}\n\n'
    assert sse(b"x", "error") == b"event: error\ndata: x\n\n"
    assert sse(b"a\nb") == b"data: a\ndata: b\n\n"


async def test_the_http_client_keeps_event_names_and_plain_answers() -> None:
    async def stream(_: web.Request) -> web.StreamResponse:
        r = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await r.prepare(_)
        await r.write(b'data: {"task": {}}\r\n\r\nevent: error\r\ndata: {"error": {}}\r\n\r\n')
        return r

    async def plain(_: web.Request) -> web.Response:
        return web.json_response({"error": {"code": 404}}, status=404)

    app = web.Application()
    app.router.add_post("/s", stream)
    app.router.add_get("/p", plain)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    client = HttpAgentClient()
    try:
        items = [i async for i in client.stream(str(server.make_url("/s")), b"{}", {}, 5)]
        assert [(i.kind, i.event, i.data) for i in items] == [
            ("event", None, b'{"task": {}}'),
            ("event", "error", b'{"error": {}}'),
        ]
        got = [
            i async for i in client.stream(str(server.make_url("/p")), None, {}, 5, method="GET")
        ]
        assert [(g.kind, g.status, g.content_type.split(";")[0]) for g in got] == [
            ("reply", 404, "application/json")
        ]
    finally:
        await client.close()
        await server.close()
