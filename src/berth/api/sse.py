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
        me = asyncio.current_task()
        left = False  # the caller disconnected, and the watcher cancelled this task

        async def watch() -> None:
            nonlocal left
            while (await receive())["type"] != "http.disconnect":
                pass
            if me is not None:
                left = True
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
                if left:  # the cancel was absorbed on its way (e.g. by a wait_for inside)
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            else:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            # the caller left: this response is over, not cancelled; a cancel of its own
            # (a shutdown) besides the watcher's still propagates
            if not left or me is None or me.uncancel() > 0:
                raise
            left = False
        finally:
            watcher.cancel()
            if left and me is not None and me.cancelling():
                me.uncancel()  # the watcher's cancel, absorbed before it reached us
            aclose = getattr(self.stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
