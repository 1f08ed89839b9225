"""berth's SSE response (api/sse.py): the body as it is produced, and a caller who leaves
releases the stream at once (its generator closed: the subscription behind it freed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from berth.api.sse import SseResponse


class Caller:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.leave = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)


async def test_a_stream_is_sent_as_produced_and_ended():
    async def events() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        yield b"data: 2\n\n"

    caller = Caller()
    await SseResponse(events(), 200, {"x-berth-delivery-id": "d1"})({}, caller.receive, caller.send)
    start, *body = caller.sent
    assert start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"].startswith(b"text/event-stream")
    assert headers[b"x-berth-delivery-id"] == b"d1" and b"content-length" not in headers
    assert [m["body"] for m in body] == [b"data: 1\n\n", b"data: 2\n\n", b""]
    assert [m["more_body"] for m in body] == [True, True, False]


async def test_a_caller_who_leaves_releases_the_stream_at_once():
    closed = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b"data: first\n\n"
            await asyncio.sleep(3600)  # the agent's next event, far away
            yield b"data: never\n\n"
        finally:
            closed.set()

    caller = Caller()
    task = asyncio.create_task(SseResponse(events(), 200, {})({}, caller.receive, caller.send))
    await asyncio.sleep(0.05)
    assert [m.get("body") for m in caller.sent[1:]] == [b"data: first\n\n"]
    caller.leave.set()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done == {task}, "the response kept waiting for an event nobody will read"
    assert closed.is_set() and not task.cancelled() and task.exception() is None
    assert asyncio.current_task().cancelling() == 0


async def test_a_cancelled_response_is_cancelled():
    """A shutdown's cancel is not a caller leaving: it propagates."""

    async def events() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        await asyncio.sleep(3600)
        yield b"data: never\n\n"

    caller = Caller()
    task = asyncio.create_task(SseResponse(events(), 200, {})({}, caller.receive, caller.send))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_leave_whose_cancel_the_stream_absorbed_still_ends_cleanly():
    """Python 3.11's wait_for can swallow a cancel (the proxy's pipe waits with it): the
    response still ends at the next event, sends nothing more, and leaves its task with
    no cancel pending."""

    async def events() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # absorbed on the way
        yield b"data: late\n\n"

    caller = Caller()

    async def respond() -> int:
        await SseResponse(events(), 200, {})({}, caller.receive, caller.send)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling()

    task = asyncio.create_task(respond())
    await asyncio.sleep(0.05)
    caller.leave.set()
    assert await asyncio.wait_for(task, 2) == 0
    assert [m.get("body") for m in caller.sent[1:]] == [b"data: first\n\n"]
