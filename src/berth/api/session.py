"""Operator sessions for the dashboard: a signed cookie and its CSRF token.

The operator signs in once with the admin token; berth answers with two cookies:

- `berth_session` (HttpOnly, SameSite=Strict): `<expiry>.<nonce>.<signature>`, signed with a
  key derived from the admin token. It is stateless, so every replica that shares the admin
  token accepts it, and changing the admin token ends every session.
- `berth_csrf` (readable by the page, SameSite=Strict): an HMAC of the session value. Every
  state-changing request made with the session cookie must repeat it in the `X-Berth-CSRF`
  header (a signed double-submit token): a page of another origin can make the browser send
  the cookie, never read it or set the header.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from starlette.requests import Request

from berth.domain.errors import Forbidden

__all__ = [
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "LIFETIME",
    "SAFE_METHODS",
    "SESSION_COOKIE",
    "authorize",
    "csrf_for",
    "issue",
    "valid",
]

SESSION_COOKIE = "berth_session"
CSRF_COOKIE = "berth_csrf"
CSRF_HEADER = "x-berth-csrf"
LIFETIME = 12 * 3600  # seconds a session lasts; the operator signs in again after that
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _key(admin_token: str) -> bytes:
    return hashlib.sha256(b"berth-ui-session\0" + admin_token.encode()).digest()


def _mac(admin_token: str, purpose: str, value: str) -> str:
    digest = hmac.new(_key(admin_token), f"{purpose}\0{value}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def issue(admin_token: str, now: float | None = None) -> tuple[str, str]:
    """A new (session cookie value, CSRF token)."""
    expiry = int((time.time() if now is None else now) + LIFETIME)
    body = f"{expiry}.{secrets.token_urlsafe(16)}"
    session = f"{body}.{_mac(admin_token, 'session', body)}"
    return session, csrf_for(admin_token, session)


def csrf_for(admin_token: str, session: str) -> str:
    return _mac(admin_token, "csrf", session)


def valid(admin_token: str, session: str | None, now: float | None = None) -> bool:
    """The cookie was signed with this admin token and has not expired."""
    if not session or len(session) > 256:
        return False
    body, _, sig = session.rpartition(".")
    expiry, _, _nonce = body.partition(".")
    if not expiry.isdigit() or not hmac.compare_digest(sig, _mac(admin_token, "session", body)):
        return False
    return int(expiry) > (time.time() if now is None else now)


def authorize(request: Request, admin_token: str) -> bool:
    """True when the request carries a valid session; a state-changing request must also carry
    the session's CSRF token (else Forbidden). False when there is no valid session."""
    session = request.cookies.get(SESSION_COOKIE)
    if not valid(admin_token, session):
        return False
    assert session is not None
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        if not sent or not hmac.compare_digest(sent, csrf_for(admin_token, session)):
            raise Forbidden(
                "a request made with the session cookie must carry its CSRF token "
                f"in the {CSRF_HEADER} header",
                code="csrf_failed",
            )
    return True
