"""The HTTP+JSON (REST) binding's routes: `/v1/workspaces/{ref}/a2a/rest/<A2A path>`.
Errors berth raises itself are HTTP+JSON error bodies (`{"error": {code, status, message,
details}}`) with the error edge's HTTP status; an envelope problem is 400."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from berth.api.a2a import authorize, read_body, render
from berth.api.errors import edge, extra_headers
from berth.bootstrap import Container
from berth.domain.errors import BerthError, RpcInvalid
from berth.services.rest import handle_rest
from berth.wire import rest_error

__all__ = ["a2a_rest_endpoint", "rest_error_response"]


def rest_error_response(e: BerthError) -> Response:
    how = edge(e)
    status = 400 if isinstance(e, RpcInvalid) else how.status
    reason = e.code.upper() if e.code else "INTERNAL"
    return Response(
        rest_error(status, e.message, reason),
        status_code=status,
        media_type="application/json",
        headers=extra_headers(how),
    )


async def a2a_rest_endpoint(request: Request) -> Response:
    c: Container = request.app.state.berth
    try:
        ws, caller = await authorize(c, request)
        raw = await read_body(request, c.settings.max_body_bytes)
        reply = await handle_rest(
            c.proxy,
            ws,
            request.method,
            "/" + request.path_params["path"],
            request.url.query,
            raw,
            dict(request.headers.items()),
            caller.subject,
        )
    except BerthError as e:
        return rest_error_response(e)
    return render(reply)
