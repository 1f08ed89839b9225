"""Stored replies: replaying a deduplicated response, and capturing a stream's final event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import Response

from berth.sdk.dedupe import Dedupe
from berth.sdk.drain import Drain

__all__ = ["capture", "final", "replay"]


def replay(body: bytes, rid: Any, stream: bool) -> Response:
    doc = orjson.loads(body)
    doc["id"] = rid
    if not stream:
        return Response(orjson.dumps(doc), media_type="application/json")
    return Response(b"data: " + orjson.dumps(doc) + b"\n\n", media_type="text/event-stream")


async def capture(
    events: Any, mid: str, method: str, dedupe: Dedupe, drain: Drain
) -> AsyncIterator[Any]:
    last: str | None = None
    try:
        async for item in events:
            if isinstance(item, dict) and isinstance(item.get("data"), str):
                last = item["data"]
            yield item
    finally:
        done = last is not None and final(last)
        dedupe.finish(mid, method, last.encode() if done and last else None)
        drain.leave(mid)


def final(data: str) -> bool:
    try:
        doc = orjson.loads(data)
    except ValueError:
        return False
    res = doc.get("result") if isinstance(doc, dict) else None
    if not isinstance(res, dict):
        return "error" in doc and "DRAINING" not in data
    if "message" in res or res.get("kind") == "message" or res.get("final") is True:
        return True
    for inner in (res.get("task"), res.get("statusUpdate"), res):
        state = (inner or {}).get("status", {}).get("state", "") if isinstance(inner, dict) else ""
        if state.replace("TASK_STATE_", "").lower().replace("_", "-") in (
            "completed",
            "failed",
            "canceled",
            "rejected",
            "input-required",
            "auth-required",
        ):
            return True
    return False
