"""What berth knows of the A2A wire, in one place, shared by the server and the agent SDK.

Standard library only: the SDK imports it without pulling in anything of the server.

The DRAINING refusal, as an agent answers a send while draining (HTTP 200):

    {"jsonrpc": "2.0", "id": <id>, "error": {"code": -32603, "message": "agent is draining ...",
     "data": {"reason": "DRAINING", "retryAfterSeconds": "5"}}}

The drain signal's answer: {"jsonrpc": "2.0", "id": <id>, "result": {"drained": bool,
"in_flight": int, "completed": [messageId], "unfinished": [messageId]}}.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "CANCEL_METHODS",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "PARSE_ERROR",
    "RETRY_AFTER",
    "SEND_METHODS",
    "STREAM_METHODS",
    "SUBSCRIBE_METHODS",
    "TASK_NOT_FOUND",
    "A2A_JSON",
    "REST_PREFIX",
    "container_name",
    "draining_error",
    "is_draining_error",
    "is_stream",
    "is_terminal_event",
    "rest_error",
    "rest_method",
    "rest_path",
    "rpc_error",
    "rpc_result",
]

# Method names, A2A 0.3 (slash) and 1.0 (PascalCase) vocabularies.
SEND_METHODS = frozenset({"message/send", "SendMessage"})
STREAM_METHODS = frozenset({"message/stream", "SendStreamingMessage"})
SUBSCRIBE_METHODS = frozenset({"tasks/resubscribe", "SubscribeToTask"})
CANCEL_METHODS = frozenset({"tasks/cancel", "CancelTask"})

# JSON-RPC 2.0 error codes berth answers with (and A2A's TaskNotFound).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
TASK_NOT_FOUND = -32001

RETRY_AFTER = "5"

# The HTTP+JSON (REST) binding. A delivery accepted over it records its method as
# REST_PREFIX + the path under the agent's HTTP+JSON URL, e.g. "rest:/message:send" or
# "rest:/<tenant>/message:stream"; its request is the body as the caller sent it.
REST_PREFIX = "rest:"
A2A_JSON = "application/a2a+json"  # the binding's media type (ProtoJSON bodies)
REST_SEND_SUFFIX = "/message:send"
REST_STREAM_SUFFIX = "/message:stream"

# A2A error reasons (google.rpc.ErrorInfo) and gRPC status names for HTTP statuses berth
# answers HTTP+JSON callers with.
_GRPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
}

# Task states after which a stream ends (terminal or interrupted), both vocabularies.
_TERMINAL = frozenset(
    {
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
)


def container_name(workspace_id: str, version: int = 1) -> str:
    """The Docker container (and network alias) of a workspace: `ws-<id[:12]>`, and
    `ws-<id[:12]>-v<n>` for version n > 1 (a deploy runs two versions side by side)."""
    base = f"ws-{workspace_id[:12]}"
    return base if version <= 1 else f"{base}-v{version}"


def rpc_result(request_id: Any, result: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode()


def rpc_error(request_id: Any, code: int, message: str, data: Any = None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": err}).encode()


def rest_method(path: str) -> str:
    return REST_PREFIX + path


def rest_path(method: str) -> str | None:
    """The path of an HTTP+JSON delivery's method, None for a JSON-RPC one."""
    return method[len(REST_PREFIX) :] if method.startswith(REST_PREFIX) else None


def is_stream(method: str) -> bool:
    """True for a delivery whose answer is a stream: SendStreamingMessage / message/stream,
    or the HTTP+JSON binding's `message:stream`."""
    return method in STREAM_METHODS or (
        method.startswith(REST_PREFIX) and method.endswith(REST_STREAM_SUFFIX)
    )


def rest_error(http_status: int, message: str, reason: str, metadata: Any = None) -> bytes:
    """An HTTP+JSON error body: {"error": {code, status, message, details: [ErrorInfo]}}."""
    info = {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "berth",
        "metadata": {k: str(v) for k, v in (metadata or {}).items()},
    }
    err = {
        "code": http_status,
        "status": _GRPC_STATUS.get(http_status, "INTERNAL"),
        "message": message,
        "details": [info],
    }
    return json.dumps({"error": err}).encode()


def draining_error(request_id: Any) -> bytes:
    return rpc_error(
        request_id,
        INTERNAL_ERROR,
        "agent is draining for a restart; send again after it",
        {"reason": "DRAINING", "retryAfterSeconds": RETRY_AFTER},
    )


def is_draining_error(error: Any) -> bool:
    """True for the SDK's refusal while draining: JSON-RPC -32603 whose data carries
    reason DRAINING, as an object or inside a list of google.rpc.ErrorInfo entries."""
    if not isinstance(error, dict):
        return False
    data = error.get("data")
    for item in data if isinstance(data, list) else [data]:
        if isinstance(item, dict) and (
            item.get("reason") == "DRAINING"
            or (
                isinstance(item.get("metadata"), dict)
                and item["metadata"].get("reason") == "DRAINING"
            )
        ):
            return True
    return False


def is_terminal_event(data: bytes) -> bool:
    """True if this JSON-RPC stream event ends the stream: an error, a Message, or a task
    or status update in a terminal or interrupted state (A2A 1.0 and 0.3 shapes)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    if not isinstance(doc, dict):
        return False
    if "error" in doc:
        return True
    # JSON-RPC wraps the StreamResponse in "result"; HTTP+JSON sends it bare
    res = doc.get("result") if "jsonrpc" in doc or "result" in doc else doc
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
