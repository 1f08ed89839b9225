"""The A2A proxy route: a plain Starlette endpoint, kept off FastAPI's validation layer
because it is the hot path and passes bodies through. Errors are rendered by the one
error edge (`berth.api.errors`)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from berth.api.auth import bearer
from berth.api.errors import error_response, rpc_error_response
from berth.api.sse import SseResponse
from berth.bootstrap import Container
from berth.domain.credentials import Caller
from berth.domain.errors import BerthError, NotFound, TooLarge, Unavailable
from berth.domain.workspace import CardAccess, Workspace
from berth.services.bindings import ProxyReply

__all__ = ["a2a_endpoint", "agent_card_endpoint", "authorize", "read_body", "render"]


async def _authorize(c: Container, request: Request) -> tuple[Workspace, Caller]:
    """The workspace and who calls it, once the workspace's allow-list admits the caller
    (the operator always); Unauthorized / Forbidden otherwise (services.access)."""
    caller = await c.access.caller(bearer(request))
    ws = await _workspace(c, request)
    c.access.authorize(ws, caller)
    return ws, caller


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"request body over the limit of {limit} bytes")


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
    raw = b""
    try:
        ws, caller = await _authorize(c, request)
        raw = await _body(request, c.settings.max_body_bytes)
        reply = await c.proxy.handle(ws, raw, dict(request.headers.items()), caller.subject)
    except BerthError as e:  # e.g. the database is away: nothing was accepted, the caller may retry
        return rpc_error_response(e, _request_id(raw) if raw else None)
    return render(reply)


def render(reply: ProxyReply) -> Response:
    """A proxy reply as an HTTP response: a stream as SSE, else the body with the status
    and content type the agent (or berth) gave it."""
    if reply.stream is not None:
        return SseResponse(
            reply.stream,
            reply.status,
            {**reply.headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    return Response(
        reply.body, status_code=reply.status, media_type=reply.content_type, headers=reply.headers
    )


async def agent_card_endpoint(request: Request) -> Response:
    """The agent card as berth serves it (`services/card.py`): public, or for the callers
    the workspace allows (401 without a credential, 403 for a caller not on its allow-list),
    per the workspace's `card`."""
    c: Container = request.app.state.berth
    try:
        try:
            ws = await _workspace(c, request)
        except NotFound:
            await c.access.caller(bearer(request))  # no token: 401, names are not probed free
            raise
        if ws.card_access != CardAccess.PUBLIC.value:
            await _authorize(c, request)  # the allow-list, as for every A2A method
        ref = request.path_params["ref"]
        jsonrpc_url = str(request.url_for("a2a", ref=ref))
        rest_url = jsonrpc_url + "/rest"
        card = await c.proxy.agent_card(
            ws, jsonrpc_url, rest_url, request.headers.get("if-none-match")
        )
        if card is None:
            raise Unavailable(
                f"workspace {ws.name} has not registered an agent card yet", code="no_agent_card"
            )
    except BerthError as e:
        return error_response(e)
    if card.not_modified:
        return Response(status_code=304, headers=card.headers)
    return Response(card.body, media_type="application/json", headers=card.headers)


# shared with the HTTP+JSON binding's routes (api/a2a_rest.py)
authorize, read_body = _authorize, _body
