"""The A2A proxy route: a plain Starlette endpoint, kept off FastAPI's
validation layer because it is the hot path and passes bodies through."""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from berth.api.auth import bearer
from berth.bootstrap import Container
from berth.domain.errors import BerthError, Forbidden, Unauthorized
from berth.domain.workspace import Workspace
from berth.services.lifecycle import hash_token
from berth.services.replies import error_reply

__all__ = ["a2a_endpoint", "agent_card_endpoint"]


class TooLarge(Exception):
    pass


async def _authorize(c: Container, request: Request) -> None:
    token = bearer(request)
    if token is None:
        raise Unauthorized(
            "the admin token or a workspace token is required (Authorization: Bearer …)"
        )
    if hmac.compare_digest(token.encode(), c.admin_token.encode()):
        return
    if await c.store.workspace_by_token(hash_token(token)) is None:
        raise Unauthorized("invalid token", code="invalid_token")


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _rpc_error(
    status: int,
    code: int,
    message: str,
    *,
    rid: Any = None,
    data: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        error_reply(rid, code, message, data),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _request_id(raw: bytes) -> Any:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return doc.get("id") if isinstance(doc, dict) else None


async def _workspace(c: Container, request: Request) -> Workspace:
    return await c.roster.get(request.path_params["ref"])


async def a2a_endpoint(request: Request) -> Response:
    c: Container = request.app.state.berth
    try:
        await _authorize(c, request)
        ws = await _workspace(c, request)
    except (Unauthorized, Forbidden) as e:
        return _rpc_error(e.status, -32600, e.message, headers={"www-authenticate": "Bearer"})
    except BerthError as e:
        return _rpc_error(e.status, -32001 if e.status == 404 else -32603, e.message)
    try:
        raw = await _body(request, c.settings.max_body_bytes)
    except TooLarge:
        return _rpc_error(
            413, -32600, f"request body over the limit of {c.settings.max_body_bytes} bytes"
        )
    headers = {k: v for k, v in request.headers.items()}
    try:
        reply = await c.proxy.handle(ws, raw, headers)
    except BerthError as e:  # e.g. the database is away: nothing was accepted, the caller may retry
        out = _rpc_error(e.status, -32603, e.message, rid=_request_id(raw), data={"reason": e.code})
        if e.status == 503:
            out.headers["retry-after"] = "5"
        return out
    if reply.stream is not None:
        return StreamingResponse(
            reply.stream,
            status_code=reply.status,
            media_type="text/event-stream",
            headers={**reply.headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    return Response(
        reply.body, status_code=reply.status, media_type=reply.content_type, headers=reply.headers
    )


async def agent_card_endpoint(request: Request) -> Response:
    c: Container = request.app.state.berth
    try:
        await _authorize(c, request)
        ws = await _workspace(c, request)
    except BerthError as e:
        return JSONResponse({"error": {"code": e.code, "message": e.message}}, status_code=e.status)
    proxy_url = str(request.url_for("a2a", ref=request.path_params["ref"]))
    card = c.proxy.agent_card(ws, proxy_url)
    if card is None:
        return JSONResponse(
            {
                "error": {
                    "code": "no_agent_card",
                    "message": f"workspace {ws.name} has not registered an agent card yet",
                }
            },
            status_code=503,
            headers={"retry-after": "5"},
        )
    return JSONResponse(card)
