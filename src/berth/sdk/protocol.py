"""The wire between berth and an agent, stdlib only.

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
    "SEND_METHODS",
    "STREAM_METHODS",
    "draining_error",
    "is_draining_error",
    "rpc_result",
    "rpc_error",
]

SEND_METHODS = frozenset({"message/send", "SendMessage"})
STREAM_METHODS = frozenset({"message/stream", "SendStreamingMessage"})
RETRY_AFTER = "5"


def draining_error(request_id: Any) -> bytes:
    return rpc_error(
        request_id,
        -32603,
        "agent is draining for a restart; send again after it",
        {"reason": "DRAINING", "retryAfterSeconds": RETRY_AFTER},
    )


def is_draining_error(error: Any) -> bool:
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


def rpc_result(request_id: Any, result: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode()


def rpc_error(request_id: Any, code: int, message: str, data: Any = None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": err}).encode()
