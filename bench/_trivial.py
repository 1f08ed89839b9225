"""The baselines of bench/proxy.py, each run as its own process:

    python bench/_trivial.py agent --port P
    python bench/_trivial.py proxy --port P --target http://127.0.0.1:Q/

`agent`: a raw ASGI app (no a2a-sdk) under uvicorn that answers every POST with one fixed
JSON-RPC result (a Message) and serves a minimal agent card, so the agent costs next to
nothing and berth's own cost shows; a streaming send (`SendStreamingMessage`,
`message/stream`) gets an SSE stream: a `working` task event at once, the final
`completed` one 50 ms later (bench/first_event.py --trivial). `proxy`: a bare aiohttp pass-through proxy (not
durable: no log, no retries) in front of it, the cost of one plain Python hop.
"""

from __future__ import annotations

import argparse
from typing import Any

REPLY = (
    b'{"jsonrpc":"2.0","id":1,"result":{"message":{"role":"ROLE_AGENT",'
    b'"messageId":"trivial-reply","parts":[{"text":"ok"}]}}}'
)
CARD = (
    b'{"name":"trivial","description":"answers every send with one fixed result",'
    b'"version":"1.0","supportedInterfaces":[],"capabilities":{},"skills":[],'
    b'"defaultInputModes":["text/plain"],"defaultOutputModes":["text/plain"]}'
)
JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
WORKING = (
    b'data: {"jsonrpc":"2.0","id":1,"result":{"task":{"id":"t1","contextId":"c1",'
    b'"status":{"state":"TASK_STATE_WORKING"}}}}\n\n'
)
COMPLETED = (
    b'data: {"jsonrpc":"2.0","id":1,"result":{"statusUpdate":{"taskId":"t1","contextId":"c1",'
    b'"status":{"state":"TASK_STATE_COMPLETED"},"final":true}}}\n\n'
)


async def agent(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more, raw = True, b""
    while more:  # read the whole body, as a real agent would
        msg = await receive()
        raw += msg.get("body", b"")
        more = msg.get("more_body", False)
    if b'"SendStreamingMessage"' in raw or b'"message/stream"' in raw:
        import asyncio

        await send({"type": "http.response.start", "status": 200, "headers": SSE})
        await send({"type": "http.response.body", "body": WORKING, "more_body": True})
        await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": COMPLETED})
        return
    body = REPLY if scope["method"] == "POST" else CARD
    await send({"type": "http.response.start", "status": 200, "headers": JSON})
    await send({"type": "http.response.body", "body": body})


def serve_agent(port: int) -> None:
    import uvicorn

    uvicorn.run(
        agent,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


def serve_proxy(port: int, target: str) -> None:
    import aiohttp
    from aiohttp import web

    async def forward(request: web.Request) -> web.Response:
        session: aiohttp.ClientSession = request.app["session"]
        body = await request.read()
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        async with session.post(target, data=body, headers=headers) as r:
            data = await r.read()
            return web.Response(body=data, status=r.status, content_type=r.content_type)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def session_ctx(app: web.Application) -> Any:
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["session"].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", forward)
    app.router.add_get("/healthz", healthz)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["agent", "proxy"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--target")
    args = ap.parse_args()
    if args.what == "agent":
        serve_agent(args.port)
    else:
        serve_proxy(args.port, args.target)


if __name__ == "__main__":
    main()
