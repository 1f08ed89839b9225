"""Streams through the delivery log: the bus topic of a delivery's events, SSE framing.

The dispatcher publishes each agent event on the bus topic `stream.<delivery id>`; the
caller's request (on any replica) subscribed to it before the delivery was accepted.
When a stream is over is wire knowledge: `berth.wire.is_terminal_event`.
"""

from __future__ import annotations

__all__ = ["KEEP_ALIVE", "sse", "stream_topic"]

KEEP_ALIVE = b": keep-alive\n\n"


def stream_topic(delivery_id: str) -> str:
    return f"stream.{delivery_id}"


def sse(data: bytes, event: str | None = None) -> bytes:
    """One SSE event; `event` is the agent's event name when it gave one (`event: error`)."""
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + data.replace(b"\n", b"\ndata: ") + b"\n\n"
