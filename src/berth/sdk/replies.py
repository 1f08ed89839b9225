"""Stored replies: replaying a deduplicated response, and capturing a stream's final event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import Response

from berth.sdk.dedupe import Dedupe
from berth.sdk.drain import Drain
from berth.wire import is_draining_error, is_terminal_event

__all__ = ["capture", "final", "replay", "reply_key"]


def replay(body: bytes, rid: Any, stream: bool) -> Response:
    doc = orjson.loads(body)
    doc["id"] = rid
    if not stream:
        return Response(orjson.dumps(doc), media_type="application/json")
    return Response(b"data: " + orjson.dumps(doc) + b"\n\n", media_type="text/event-stream")


async def capture(
    events: Any, mid: str, method: str, dedupe: Dedupe, drain: Drain, *, key: str | None = None
) -> AsyncIterator[Any]:
    last: str | None = None
    try:
        async for item in events:
            if isinstance(item, dict) and isinstance(item.get("data"), str):
                last = item["data"]
            yield item
    finally:
        done = last is not None and final(last)
        dedupe.finish(key or mid, method, last.encode() if done and last else None)
        drain.leave(mid)


def final(data: str) -> bool:
    """The stream's last event, to keep as the reply: terminal (`berth.wire`), except the
    DRAINING refusal, which is no answer to the message."""
    if not is_terminal_event(data.encode()):
        return False
    try:
        doc = orjson.loads(data)
    except ValueError:
        return False
    return not (isinstance(doc, dict) and is_draining_error(doc.get("error")))


def reply_key(message_id: str, caller: str | None) -> str:
    """The stored reply's key: berth's accept key is (caller, messageId), so another
    caller's message with the same messageId is another message (X-Berth-Caller, set by
    berth; without it, an older berth or a delivery from before callers, the messageId)."""
    return message_id if not caller else f"{caller}\x1f{message_id}"
