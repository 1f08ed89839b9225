"""The dashboard's server side: sign in and out, the page, its static assets.

Everything the dashboard shows comes from the public `/v1` API and `GET /v1/events`, called
by the page with the session cookie (see berth.api.session); this module only hands out the
cookie and the files. No asset comes from outside the package: the pages forbid it (CSP).
"""

from __future__ import annotations

import hmac
import html
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from berth.api import session

__all__ = ["ASSETS", "install"]

ASSETS = Path(__file__).with_name("ui_assets")
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
MAX_LOGIN_BODY = 4096


def _admin_token(request: Request) -> str:
    token: str = request.app.state.berth.admin_token
    return token


def _signed_in(request: Request) -> bool:
    return session.valid(_admin_token(request), request.cookies.get(session.SESSION_COOKIE))


def _same_origin(request: Request) -> bool:
    """A browser's POST names its page's origin; one from another site is refused."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _login_page(error: str | None = None, status: int = 200) -> HTMLResponse:
    text = (ASSETS / "login.html").read_text()
    if error:
        note = f'<p class="error" role="alert" data-testid="login-error">{html.escape(error)}</p>'
        text = text.replace("<!--error-->", note)
    return HTMLResponse(text, status_code=status, headers=SECURITY_HEADERS)


def _see(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"cache-control": "no-store"})


async def root(request: Request) -> Response:
    return _see("/ui")


async def page(request: Request) -> Response:
    if not _signed_in(request):
        return _see("/ui/login")
    return HTMLResponse((ASSETS / "index.html").read_text(), headers=SECURITY_HEADERS)


async def login_form(request: Request) -> Response:
    return _see("/ui") if _signed_in(request) else _login_page()


async def login(request: Request) -> Response:
    if not _same_origin(request):
        return _login_page("This sign-in came from another site and was refused.", 403)
    raw = await request.body()
    if len(raw) > MAX_LOGIN_BODY:
        return _login_page("The form is too large.", 413)
    token = (parse_qs(raw.decode("utf-8", "replace")).get("token") or [""])[0].strip()
    admin = _admin_token(request)
    if not token:
        return _login_page("Enter the admin token.", 401)
    if not hmac.compare_digest(token.encode(), admin.encode()):
        why = (
            "A workspace token cannot sign in to the dashboard."
            if token.startswith(("bws_", "bwc_", "bwa_", "bwr_"))
            else ""
        )
        return _login_page(why or "That is not the admin token.", 401)
    value, csrf = session.issue(admin)
    out = _see("/ui")
    secure = request.url.scheme == "https"
    common = {"max_age": session.LIFETIME, "path": "/", "samesite": "strict", "secure": secure}
    out.set_cookie(session.SESSION_COOKIE, value, httponly=True, **common)  # type: ignore[arg-type]
    out.set_cookie(session.CSRF_COOKIE, csrf, httponly=False, **common)  # type: ignore[arg-type]
    return out


async def logout(request: Request) -> Response:
    """Forget the cookies (POST with the CSRF header, like every state change)."""
    if not session.authorize(request, _admin_token(request)):
        return JSONResponse({"error": {"code": "unauthorized", "message": "not signed in"}}, 401)
    out = JSONResponse({"signed_out": True})
    for name in (session.SESSION_COOKIE, session.CSRF_COOKIE):
        out.delete_cookie(name, path="/", samesite="strict")
    return out


def install(app: FastAPI) -> None:
    """`/` → `/ui`; `/ui` (the page), `/ui/login`, `/ui/logout`, `/ui/assets/*`."""
    app.add_route("/", root, methods=["GET"], include_in_schema=False)
    app.add_route("/ui", page, methods=["GET"], include_in_schema=False)
    app.add_route("/ui/", page, methods=["GET"], include_in_schema=False)
    app.add_route("/ui/login", login_form, methods=["GET"], include_in_schema=False)
    app.add_route("/ui/login", login, methods=["POST"], include_in_schema=False)
    app.add_route("/ui/logout", logout, methods=["POST"], include_in_schema=False)
    app.mount("/ui/assets", StaticFiles(directory=ASSETS), name="ui-assets")
