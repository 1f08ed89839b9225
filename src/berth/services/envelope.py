"""What the proxy checks of a request before it accepts anything: the JSON-RPC envelope,
a given messageId, and berth's own headers (X-Berth-Wait, X-Berth-TTL). Each problem is
an RpcInvalid with its JSON-RPC code (the API edge renders it per binding)."""

from __future__ import annotations

from typing import Any

import orjson

from berth.domain.errors import InvalidHeader, RpcInvalid
from berth.services.proxy_keys import CONTROL
from berth.wire import INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR

__all__ = ["MAX_MESSAGE_ID", "check_message_id", "parse_envelope", "ttl_seconds", "wait_seconds"]

MAX_MESSAGE_ID = 256


def check_message_id(message_id: Any, field: str, request_id: Any = None) -> str:
    """A given messageId berth can key and echo: a string of at most MAX_MESSAGE_ID
    characters without control characters (CR, LF, NUL … could not be a header value)."""
    if not isinstance(message_id, str) or len(message_id) > MAX_MESSAGE_ID:
        raise RpcInvalid(
            INVALID_PARAMS,
            f"{field} must be a string of at most {MAX_MESSAGE_ID} characters",
            request_id=request_id,
        )
    if CONTROL.search(message_id):
        raise RpcInvalid(
            INVALID_PARAMS,
            f"{field} must not contain control characters (CR, LF, NUL …)",
            request_id=request_id,
        )
    return message_id


def parse_envelope(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RpcInvalid(PARSE_ERROR, "parse error: the body is not valid JSON") from None
    if isinstance(doc, list):
        raise RpcInvalid(INVALID_REQUEST, "batch requests are not supported; send one request")
    if (
        not isinstance(doc, dict)
        or doc.get("jsonrpc") != "2.0"
        or not isinstance(doc.get("method"), str)
    ):
        raise RpcInvalid(
            INVALID_REQUEST,
            "invalid request: a JSON-RPC 2.0 request object with "
            '"jsonrpc": "2.0" and a string "method" is required',
            request_id=doc.get("id") if isinstance(doc, dict) else None,
        )
    if "params" in doc and not isinstance(doc["params"], (dict, list)):
        raise RpcInvalid(INVALID_PARAMS, "params must be an object", request_id=doc.get("id"))
    return doc


def wait_seconds(value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        w = float(value)
    except ValueError:
        w = -1.0
    if not 0 <= w <= 86400:
        raise InvalidHeader(
            INVALID_REQUEST, "X-Berth-Wait must be a number of seconds from 0 to 86400"
        )
    return w


def ttl_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        t = float(value)
    except ValueError:
        t = -1.0
    if t <= 0:
        raise InvalidHeader(INVALID_REQUEST, "X-Berth-TTL must be a positive number of seconds")
    return t
