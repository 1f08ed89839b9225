"""What differs between A2A's two HTTP bindings on berth's side of the proxy: how berth
words its own answers (JSON-RPC error objects at HTTP 200, or HTTP+JSON error bodies
with an HTTP status) and what a replayed reply needs (a JSON-RPC reply carries the
caller's request id). Everything else about a send is the same for both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from berth.domain.delivery import Delivery, DeliveryStatus
from berth.wire import INTERNAL_ERROR, rest_error, rpc_error

__all__ = [
    "A2A_HEADERS",
    "CALLER_HEADER",
    "FORWARDED_HEADERS",
    "Binding",
    "JsonRpc",
    "ProxyReply",
    "Rest",
    "canceled_task",
    "is_plain",
]

A2A_HEADERS = ("a2a-version", "a2a-extensions", "x-a2a-extensions")
CALLER_HEADER = "x-berth-caller"  # who called, as berth authenticated them (set by berth)
# what reaches the agent (a send's are kept with its delivery)
FORWARDED_HEADERS = (*A2A_HEADERS, "content-type", CALLER_HEADER)


@dataclass
class ProxyReply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    stream: AsyncIterator[bytes] | None = None  # an SSE body, sent as it is produced


class Binding(Protocol):
    @property
    def request_id(self) -> Any: ...  # a JSON-RPC request's id (None for HTTP+JSON)

    def for_caller(self, reply: bytes, request: bytes) -> bytes: ...
    def undelivered(self, d: Delivery) -> tuple[int, bytes]: ...
    def error(self, status: int, message: str, reason: str) -> tuple[int, bytes]: ...


def _why(d: Delivery) -> str:
    return f"berth did not deliver this message: {d.status.value}" + (
        f": {d.reason}" if d.reason else ""
    )


@dataclass(frozen=True)
class JsonRpc:
    request_id: Any

    def for_caller(self, reply: bytes, request: bytes) -> bytes:
        """An earlier send's reply, with this caller's request id."""
        if orjson.loads(request).get("id") == self.request_id:
            return reply
        doc = orjson.loads(reply)
        doc["id"] = self.request_id
        return orjson.dumps(doc)

    def undelivered(self, d: Delivery) -> tuple[int, bytes]:
        """The caller's answer for a delivery berth gave up on (dead, canceled, expired):
        berth's own error, never the agent's, so data.berth says so."""
        data = {"berth": {"delivery_id": d.id, "status": d.status.value, "reason": d.reason}}
        return 200, rpc_error(self.request_id, INTERNAL_ERROR, _why(d), data)

    def error(self, status: int, message: str, reason: str) -> tuple[int, bytes]:
        return 200, rpc_error(self.request_id, INTERNAL_ERROR, message, {"reason": reason})


@dataclass(frozen=True)
class Rest:
    request_id: Any = None

    def for_caller(self, reply: bytes, request: bytes) -> bytes:
        return reply

    def undelivered(self, d: Delivery) -> tuple[int, bytes]:
        meta = {"delivery_id": d.id, "status": d.status.value, "reason": d.reason or ""}
        return 500, rest_error(500, _why(d), f"BERTH_{d.status.value.upper()}", meta)

    def error(self, status: int, message: str, reason: str) -> tuple[int, bytes]:
        return status, rest_error(status, message, reason)


def is_plain(d: Delivery) -> bool:
    """True if the agent answered this streaming send without a stream (an up-front
    error): the caller gets that answer as it came, not a one-event stream."""
    return (
        d.status is DeliveryStatus.DONE
        and d.reply is not None
        and d.reply_type is not None
        and not d.reply_type.startswith("text/event-stream")
    )


def canceled_task(target: str, d: Delivery, *, v03: bool) -> dict[str, Any]:
    """The Task berth answers a cancel of a message still in its queue with."""
    task: dict[str, Any] = {
        "id": target,
        "contextId": "",
        "status": {"state": "canceled" if v03 else "TASK_STATE_CANCELED"},
        "metadata": {"berth": {"delivery_id": d.id, "canceled_in_queue": True}},
    }
    if v03:
        task["kind"] = "task"
    return task
