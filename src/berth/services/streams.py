"""Streams through the delivery log: when an A2A stream is over, and SSE framing.

The dispatcher publishes each agent event on the bus topic `stream.<delivery id>`; the
caller's request (on any replica) subscribed to it before the delivery was accepted.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["is_terminal_event", "sse", "stream_topic", "KEEP_ALIVE"]

KEEP_ALIVE = b": keep-alive\n\n"
_TERMINAL = {
    "TASK_STATE_COMPLETED",
    "TASK_STATE_FAILED",
    "TASK_STATE_CANCELED",
    "TASK_STATE_REJECTED",
    "TASK_STATE_INPUT_REQUIRED",
    "TASK_STATE_AUTH_REQUIRED",
    "completed",
    "failed",
    "canceled",
    "rejected",
    "input-required",
    "auth-required",
}


def stream_topic(delivery_id: str) -> str:
    return f"stream.{delivery_id}"


def sse(data: bytes) -> bytes:
    return b"data: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"


def is_terminal_event(data: bytes) -> bool:
    """True if this JSON-RPC stream event ends the stream: an error, a Message, or a task
    or status update in a terminal or interrupted state (A2A 1.0 and 0.3 shapes)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(doc, dict):
        return False
    if "error" in doc:
        return True
    res = doc.get("result")
    if not isinstance(res, dict):
        return False
    if "message" in res or res.get("kind") == "message":
        return True
    if res.get("final") is True:
        return True
    for key in ("task", "statusUpdate"):
        inner = res.get(key)
        if isinstance(inner, dict) and _state(inner) in _TERMINAL:
            return True
    return res.get("kind") in ("task", "status-update") and _state(res) in _TERMINAL


def _state(obj: dict[str, Any]) -> str | None:
    status = obj.get("status")
    return status.get("state") if isinstance(status, dict) else None
