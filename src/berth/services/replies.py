"""What an agent's HTTP answer means for a delivery (the dispatcher's one question)."""

from __future__ import annotations

import json

from berth.domain.delivery import Outcome
from berth.ports import AgentReply
from berth.wire import is_draining_error

__all__ = ["classify", "classify_rest"]


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


def classify_rest(reply: AgentReply) -> Outcome:
    """An HTTP+JSON answer: any 2xx, or an error the agent wrote ({"error": {...}} in JSON),
    is its answer (final); a DRAINING ErrorInfo is a deferral; anything else by status."""
    if 200 <= reply.status < 300:
        return Outcome.REPLIED
    try:
        doc = json.loads(reply.body)
    except ValueError:
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        if is_draining_error({"data": err.get("details")}):
            return Outcome.DRAINING
        return Outcome.REPLIED
    if reply.status >= 500 or reply.status in (408, 429):
        return Outcome.TRANSPORT
    return Outcome.REJECTED
