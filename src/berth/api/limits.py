"""A body limit on every endpoint, and the optional token of /metrics.

A body limit on every endpoint (BERTH_MAX_BODY_BYTES): a declared Content-Length over
it is refused before the body is read (413), and a body that grows past it while read
raises TooLarge, which the error edge renders as 413 too."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from berth.api.auth import bearer
from berth.api.errors import error_response
from berth.domain.errors import TooLarge, Unauthorized

__all__ = ["BodyLimit", "require_token", "token_matches"]


def token_matches(got: str | None, token: str | None, admin: str) -> bool:
    """True if `got` may use an endpoint that is open unless a token is configured
    (BERTH_METRICS_TOKEN): no token configured, or that token, or the admin token."""
    if not token:
        return True
    return got is not None and any(
        hmac.compare_digest(got.encode(), t.encode()) for t in (token, admin)
    )


def require_token(request: Request, token: str | None, admin: str) -> None:
    got = bearer(request)
    if token and got is None:
        raise Unauthorized("a token is required (Authorization: Bearer …)")
    if not token_matches(got, token, admin):
        raise Unauthorized("invalid token", code="invalid_token")


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = TooLarge(f"request body over the limit of {self.limit} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    await error_response(too_large)(scope, receive, send)
                    return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_large
            return message

        await self.app(scope, bounded, send)
