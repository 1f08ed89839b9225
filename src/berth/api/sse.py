"""The response of a stream berth relays: an SSE body sent as it is produced.

Starlette's StreamingResponse watches for the caller's disconnect with an anyio task
group per response (uvicorn speaks ASGI 2.3), and ending that group formats the repr of
its task, callbacks' source lines included: a measurable part of berth's CPU per stream
(py-spy, docs/benchmarks.md). This does the same with one plain asyncio task waiting on
`receive()`: when the caller goes away, the stream's generator is closed (its subscription
released) and the response ends; the delivery itself goes on in the log."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["SseResponse"]


class SseResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self, stream: AsyncIterator[bytes], status_code: int, headers: Mapping[str, str]
    ) -> None:
        self.stream = stream
        self.status_code = status_code
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()
        me = asyncio.current_task()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            if me is not None:
                me.cancel()  # stop waiting for the next event: nobody will read it

        watcher = asyncio.ensure_future(watch())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self.stream:
                if gone.is_set():
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone.is_set():
                raise
            if me is not None:
                me.uncancel()  # the caller left: this response is over, not cancelled
        finally:
            watcher.cancel()
            aclose = getattr(self.stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
