"""The baselines of bench/proxy.py, each run as its own process:

    python bench/_trivial.py agent --port P
    python bench/_trivial.py proxy --port P --target http://127.0.0.1:Q/
    python bench/_trivial.py durable --port P --target http://127.0.0.1:Q/ --db FILE

`agent`: a raw ASGI app (no a2a-sdk) under uvicorn that answers every POST with one fixed
JSON-RPC result (a Message) and serves a minimal agent card, so the agent costs next to
nothing and berth's own cost shows; a streaming send (`SendStreamingMessage`,
`message/stream`) gets an SSE stream: a `working` task event at once, the final
`completed` one 50 ms later (bench/first_event.py --trivial). `proxy`: a bare aiohttp pass-through proxy (not
durable: no log, no retries) in front of it, the cost of one plain Python hop.
`durable`: the same proxy plus the least a durable hop must do, so the cost of durability
itself in Python shows: each request's body is inserted into SQLite (WAL,
`synchronous=FULL`) and committed before it is forwarded, the agent's answer is written
to the same row and committed before the caller is answered, and concurrent writes share
one transaction and one fsync (group commit: one thread drains a queue, runs everything
waiting in one transaction, commits, and wakes the batch's callers with one hand-off). No
retries, leases, auth, idempotency or recovery: a floor, not a product.
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


def serve_proxy(port: int, target: str, log: GroupCommit | None = None) -> None:
    """The bare pass-through proxy; with a `log`, the durable floor (each request committed
    before it is forwarded, its answer committed before the caller is answered)."""
    import aiohttp
    from aiohttp import web

    async def forward(request: web.Request) -> web.Response:
        session: aiohttp.ClientSession = request.app["session"]
        body = await request.read()
        row = None if log is None else await log.write("INSERT INTO log (body) VALUES (?)", (body,))
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        async with session.post(target, data=body, headers=headers) as r:
            data = await r.read()
        if log is not None:
            await log.write("UPDATE log SET reply = ? WHERE id = ?", (data, row))
        return web.Response(body=data, status=r.status, content_type=r.content_type)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok" if log is None else f"ok synchronous={log.synchronous}")

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


class GroupCommit:
    """SQLite writes committed in groups by one thread: `await write(sql, params)` returns
    once the write is in a committed (fsynced, with `synchronous=FULL`) transaction."""

    def __init__(self, path: str) -> None:
        import queue
        import sqlite3
        import threading

        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.synchronous = self.db.execute("PRAGMA synchronous").fetchone()[0]  # 2: FULL
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, body BLOB, reply BLOB)"
        )
        self.q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._commit, daemon=True).start()

    def write(self, sql: str, params: tuple[Any, ...]) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.q.put((sql, params, fut, loop))
        return fut

    def _commit(self) -> None:
        import queue

        while True:
            batch = [self.q.get()]
            while True:
                try:
                    batch.append(self.q.get_nowait())
                except queue.Empty:
                    break
            self.db.execute("BEGIN")
            results = [self.db.execute(sql, params).lastrowid for sql, params, _, _ in batch]
            self.db.execute("COMMIT")
            batch[0][3].call_soon_threadsafe(
                _wake, [(b[2], r) for b, r in zip(batch, results, strict=True)]
            )


def _wake(done: list[tuple[Any, Any]]) -> None:
    for fut, result in done:
        if not fut.done():
            fut.set_result(result)


def serve_durable(port: int, target: str, db: str) -> None:
    import sys

    sys.setswitchinterval(0.0005)  # as `berth serve`: the committer's hand-off not held 5 ms
    serve_proxy(port, target, GroupCommit(db))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["agent", "proxy", "durable"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--target")
    ap.add_argument("--db", help="durable: the SQLite file of its log")
    args = ap.parse_args()
    if args.what == "agent":
        serve_agent(args.port)
    elif args.what == "durable":
        serve_durable(args.port, args.target, args.db)
    else:
        serve_proxy(args.port, args.target)


if __name__ == "__main__":
    main()
