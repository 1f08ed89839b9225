"""What an agent's HTTP answer means for a delivery (the dispatcher's one question)."""

from __future__ import annotations

import json
from typing import Any

from berth.domain.delivery import Outcome
from berth.ports import AgentReply

__all__ = ["classify", "error_reply", "is_draining_error"]


def is_draining_error(error: Any) -> bool:
    """True for the SDK's refusal while draining: JSON-RPC -32603 whose data carries
    reason DRAINING, as an object or inside a list of google.rpc.ErrorInfo entries."""
    if not isinstance(error, dict):
        return False
    data = error.get("data")
    items = data if isinstance(data, list) else [data]
    for item in items:
        if isinstance(item, dict) and (
            item.get("reason") == "DRAINING"
            or (
                isinstance(item.get("metadata"), dict)
                and item["metadata"].get("reason") == "DRAINING"
            )
        ):
            return True
    return False


def classify(reply: AgentReply) -> Outcome:
    body = reply.body
    if b'"jsonrpc"' in body and (b'"result"' in body or b'"error"' in body):
        if b'"error"' in body and b"DRAINING" in body:
            try:
                doc = json.loads(body)
            except ValueError:
                return Outcome.TRANSPORT
            if isinstance(doc, dict) and is_draining_error(doc.get("error")):
                return Outcome.DRAINING
        return Outcome.REPLIED
    if reply.status >= 500 or reply.status == 200:
        return Outcome.TRANSPORT
    if reply.status in (408, 429):
        return Outcome.TRANSPORT
    return Outcome.REJECTED


def error_reply(
    request_id: Any, code: int, message: str, data: dict[str, Any] | None = None
) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": err}).encode()
