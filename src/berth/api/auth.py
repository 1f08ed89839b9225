"""Bearer tokens: the admin token for operators (credentials by role: services.access)."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from berth.api import session
from berth.domain.errors import Forbidden, Unauthorized

__all__ = ["bearer", "require_admin"]


def bearer(request: Request) -> str | None:
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_admin(request: Request) -> None:
    token = bearer(request)
    if token is None:
        # the dashboard's session cookie (CSRF header checked on state-changing requests)
        if session.authorize(request, request.app.state.berth.admin_token):
            return
        raise Unauthorized("the admin token is required (Authorization: Bearer …)")
    if not hmac.compare_digest(token.encode(), request.app.state.berth.admin_token.encode()):
        if token.startswith(("bws_", "bwc_", "bwa_", "bwr_")):
            raise Forbidden(
                "a workspace, caller or agent credential cannot use the management API",
                code="forbidden",
            )
        raise Unauthorized("invalid admin token", code="invalid_token")
