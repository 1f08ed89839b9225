"""The one error edge: every error berth answers with is a `BerthError`, and this table
says what HTTP status and JSON-RPC code it becomes, for the management API, the agent
API, the A2A proxy and the agent card alike (the way a2a-sdk keeps its error-code maps).

The most specific class wins: the table is looked up along the error's MRO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from berth.domain.errors import (
    AgentUnreachable,
    BerthError,
    Conflict,
    Forbidden,
    InvalidHeader,
    InvalidInput,
    MalformedBody,
    NotFound,
    Overloaded,
    RpcInvalid,
    StartFailed,
    TooLarge,
    Unauthorized,
    Unavailable,
    UrlRefused,
)
from berth.wire import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    RETRY_AFTER,
    TASK_NOT_FOUND,
    rpc_error,
)

__all__ = [
    "EDGE",
    "Edge",
    "edge",
    "error_response",
    "extra_headers",
    "install",
    "rpc_error_response",
]


@dataclass(frozen=True)
class Edge:
    status: int  # HTTP
    rpc_code: int  # JSON-RPC (an RpcInvalid carries its own)
    retry: bool = False  # Retry-After: the caller may try again shortly
    challenge: bool = False  # WWW-Authenticate: Bearer


EDGE: dict[type[BerthError], Edge] = {
    InvalidHeader: Edge(400, INVALID_REQUEST),
    RpcInvalid: Edge(200, INVALID_REQUEST),  # JSON-RPC errors about the body travel as 200
    MalformedBody: Edge(400, PARSE_ERROR),
    TooLarge: Edge(413, INVALID_REQUEST),
    UrlRefused: Edge(400, INVALID_PARAMS),
    InvalidInput: Edge(422, INVALID_PARAMS),
    Unauthorized: Edge(401, INVALID_REQUEST, challenge=True),
    Forbidden: Edge(403, INVALID_REQUEST),
    NotFound: Edge(404, TASK_NOT_FOUND),
    Conflict: Edge(409, INTERNAL_ERROR),
    Overloaded: Edge(429, INTERNAL_ERROR, retry=True),
    StartFailed: Edge(502, INTERNAL_ERROR),
    AgentUnreachable: Edge(502, INTERNAL_ERROR, retry=True),
    Unavailable: Edge(503, INTERNAL_ERROR, retry=True),
    BerthError: Edge(500, INTERNAL_ERROR),
}


def edge(e: BerthError) -> Edge:
    for cls in type(e).__mro__:
        found = EDGE.get(cls)
        if found is not None:
            return found
    return EDGE[BerthError]


def _headers(how: Edge) -> dict[str, str]:
    out = {}
    if how.retry:
        out["retry-after"] = RETRY_AFTER
    if how.challenge:
        out["www-authenticate"] = "Bearer"
    return out


extra_headers = _headers  # Retry-After / WWW-Authenticate for an edge (the REST binding's)


def error_response(e: BerthError) -> JSONResponse:
    """The management and agent APIs' error: {"error": {"code", "message"}}."""
    how = edge(e)
    return JSONResponse(
        {"error": {"code": e.code, "message": e.message}},
        status_code=how.status,
        headers=_headers(how),
    )


def rpc_error_response(e: BerthError, request_id: Any = None) -> Response:
    """The proxy's error: a JSON-RPC error object (data.reason is berth's error code)."""
    how = edge(e)
    if isinstance(e, RpcInvalid):
        body = rpc_error(
            e.request_id if e.request_id is not None else request_id, e.rpc_code, e.message
        )
    else:
        body = rpc_error(request_id, how.rpc_code, e.message, {"reason": e.code})
    return Response(
        body, status_code=how.status, media_type="application/json", headers=_headers(how)
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(BerthError)
    async def berth_error(_: Request, e: BerthError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return error_response(InvalidInput("; ".join(parts) or "invalid input"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            e.status_code, "http_error"
        )
        return JSONResponse(
            {"error": {"code": code, "message": str(e.detail)}}, status_code=e.status_code
        )
