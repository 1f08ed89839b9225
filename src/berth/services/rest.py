"""A2A's HTTP+JSON (REST) binding through berth. `POST …/message:send` and
`…/message:stream` are sends: accepted into the delivery log with the same idempotency
(by `message.messageId`), hold-across-restarts and reply semantics as JSON-RPC sends. Every
other route (`GET tasks/{id}`, `GET tasks`, `:cancel`, `:subscribe`, push-notification
configs, the extended card) passes through to the agent's HTTP+JSON URL, held while the
workspace restarts. Paths may carry a tenant prefix (`/{tenant}/message:send`)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson

from berth.domain.credentials import OPERATOR
from berth.domain.errors import NotFound, RpcInvalid
from berth.domain.workspace import Workspace
from berth.services.bindings import (
    CALLER_HEADER,
    FORWARDED_HEADERS,
    ProxyReply,
    Rest,
    canceled_task,
)
from berth.services.card import rest_url
from berth.services.envelope import check_message_id, wait_seconds
from berth.services.proxy import PASS_THROUGH_MAX_WAIT, Proxy
from berth.services.proxy_keys import fingerprint, ids
from berth.wire import (
    A2A_JSON,
    INVALID_PARAMS,
    PARSE_ERROR,
    REST_SEND_SUFFIX,
    REST_STREAM_SUFFIX,
    rest_method,
)

__all__ = ["handle_rest"]

_CANCEL = re.compile(r"^(?:/[^/]+)?/tasks/([^/]+):cancel$")
_SUBSCRIBE = re.compile(r"^(?:/[^/]+)?/tasks/([^/]+):subscribe$")
REST = Rest()


def _message_id(raw: bytes) -> tuple[str, bytes]:
    """The send's messageId (given one when missing). ProtoJSON accepts both field names:
    `message`/`messageId`, and the proto names `request`/`message_id` (a2a-sdk's v0.3
    client sends those)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise RpcInvalid(PARSE_ERROR, "the body is not valid JSON") from None
    message = None
    if isinstance(doc, dict):
        message = doc.get("message", doc.get("request"))
    if not isinstance(message, dict):
        raise RpcInvalid(INVALID_PARAMS, "message is required for a send (an A2A Message object)")
    key = "message_id" if "message_id" in message else "messageId"
    mid = message.get(key)
    if mid is None or mid == "":
        mid = str(uuid.uuid4())
        message[key] = mid
        raw = orjson.dumps(doc)
    else:
        check_message_id(mid, "message.messageId")
    return mid, raw


async def handle_rest(
    proxy: Proxy,
    ws: Workspace,
    method: str,
    path: str,
    query: str,
    raw: bytes,
    headers: dict[str, str],
    caller: str = OPERATOR,
) -> ProxyReply:
    """One HTTP+JSON request of `caller` (already authorised for `ws`: services.access)."""
    headers = {**headers, CALLER_HEADER: caller}  # berth's word, never the caller's
    wait = wait_seconds(headers.get("x-berth-wait"), proxy.default_wait)
    if ws.agent_card is not None and rest_url(ws.agent_card) is None:
        raise NotFound(
            f"the agent of {ws.name} serves no HTTP+JSON interface (its card declares none)",
            code="no_rest_interface",
        )
    if method == "POST" and path.endswith((REST_SEND_SUFFIX, REST_STREAM_SUFFIX)):
        mid, raw = _message_id(raw)
        return await proxy.accept(
            ws,
            rest_method(path),
            mid,
            raw,
            headers,
            wait,
            REST,
            streaming=path.endswith(REST_STREAM_SUFFIX),
            fingerprint=fingerprint(orjson.loads(raw)),  # the body is a send's params
        )
    if method == "POST" and (m := _CANCEL.match(path)):
        d = await proxy.cancel_queued(ws, m[1], caller)
        if d is not None:
            task: dict[str, Any] = canceled_task(m[1], d, v03=False)
            return ProxyReply(200, orjson.dumps(task), ids(d), A2A_JSON)
    return await proxy.pass_through(
        ws,
        raw if method in ("POST", "PUT", "PATCH") else None,
        {k: v for k, v in headers.items() if k in FORWARDED_HEADERS},
        min(wait, PASS_THROUGH_MAX_WAIT),
        stream=bool(_SUBSCRIBE.match(path)),
        method=method,
        path=path + (f"?{query}" if query else ""),
        how=REST,
    )
