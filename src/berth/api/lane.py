"""`POST /v1/lane/handoff/{delivery_id}`: the fast lane hands an attempt to Python
(docs/fast-lane.md). Served ahead of FastAPI (`api/fast.py`) to the lane alone: without
its secret the path is an unknown route, and it is in no OpenAPI document."""

from __future__ import annotations

import logging
import re
from typing import Any

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from berth.api.a2a import render
from berth.api.errors import error_response
from berth.domain.errors import BerthError, InvalidInput
from berth.lane import Handed, Lane

log = logging.getLogger("berth.api")
__all__ = ["HANDOFF_PATH", "from_lane_socket", "lane_secret", "lane_handoff"]

HANDOFF_PATH = re.compile(r"^/v1/lane/handoff/([^/]+)$")
SECRET_HEADER = b"x-berth-lane-secret"


def from_lane_socket(lane: Lane, scope: Scope) -> bool:
    """The request came over the lane's hand-off socket (`<data dir>/berth-lane.sock`):
    uvicorn sets `server` to (its path, None) for a Unix socket connection, and to (host,
    port) for a TCP one. The lane relays its callers' requests over `berth.sock` only, and
    writes nothing but its own hand-offs here, so no request a caller sent (however it
    spells the path) reaches the hand-off route; the secret is checked as well."""
    server = scope.get("server")
    return (
        server is not None
        and len(server) == 2
        and server[1] is None
        and server[0] == str(lane.handoff_path)
    )


def lane_secret(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == SECRET_HEADER:
            return bytes(value).decode("latin-1")
    return None


async def lane_handoff(
    lane: Lane, delivery_id: str, scope: Scope, receive: Receive, send: Send
) -> None:
    request = Request(scope, receive)
    response: Any
    try:
        h = _handed(delivery_id, request.headers, await request.body())
        response = render(await lane.handoff.take(h))
    except BerthError as e:
        response = error_response(e)
    except Exception:  # a bug: answered as an internal error, logged; the lease expires
        log.exception("the fast lane's hand-off of %s failed", delivery_id)
        response = error_response(BerthError("internal error"))
    await response(scope, receive, send)


def _handed(delivery_id: str, headers: Any, body: bytes) -> Handed:
    try:
        status = headers.get("x-berth-lane-status")
        wait = float(headers.get("x-berth-lane-wait") or 0)
        crashes = headers.get("x-berth-lane-crashes")
        return Handed(
            delivery_id,
            headers.get("x-berth-lane-outcome", ""),
            status=int(status) if status else None,
            content_type=headers.get("content-type"),
            detail=headers.get("x-berth-lane-detail"),
            wait=max(0.0, wait) if wait == wait else 0.0,  # NaN: no wait
            body=body,
            run=headers.get("x-berth-lane-run"),  # "": the run had no token
            crashes=int(crashes) if crashes else None,
        )
    except ValueError as e:
        raise InvalidInput(f"a malformed hand-off: {e}") from None
