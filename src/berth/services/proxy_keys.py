"""What the proxy keys and labels a send by: the request's fingerprint (a reused
messageId must repeat the same request) and reply headers that are always valid header
values."""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import quote

import orjson

from berth.domain.delivery import Delivery

__all__ = ["CONTROL", "fingerprint", "ids"]

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")


def ids(d: Delivery) -> dict[str, str]:
    """Reply headers naming the delivery. A messageId that is not printable ASCII cannot be
    a header value as it is: it goes percent-encoded (UTF-8) in X-Berth-Message-Id-Encoded
    instead, so the reply is never lost to a header."""
    out = {"x-berth-delivery-id": d.id}
    if _HEADER_SAFE.fullmatch(d.message_id):
        out["x-berth-message-id"] = d.message_id
    else:
        out["x-berth-message-id-encoded"] = quote(d.message_id, safe="")
    return out


def fingerprint(params: Any) -> str:
    """What a retry of the same message repeats: a JSON-RPC request's params (its id may
    differ), an HTTP+JSON send's body; keys sorted."""
    return hashlib.sha256(orjson.dumps(params, option=orjson.OPT_SORT_KEYS)).hexdigest()
