"""The dashboard's session cookie: signed by the admin token, expiring, CSRF bound to it."""

from __future__ import annotations

import time

from berth.api import session


def test_a_session_is_valid_for_its_token_until_it_expires() -> None:
    now = time.time()
    value, csrf = session.issue("admin-1", now)
    assert session.valid("admin-1", value, now)
    assert session.valid("admin-1", value, now + session.LIFETIME - 1)
    assert not session.valid("admin-1", value, now + session.LIFETIME + 1)
    # another admin token (rotated) ends every session
    assert not session.valid("admin-2", value, now)
    assert csrf == session.csrf_for("admin-1", value)
    assert csrf != session.csrf_for("admin-2", value)


def test_tampered_or_malformed_sessions_are_refused() -> None:
    now = time.time()
    value, _ = session.issue("admin", now)
    expiry, nonce, sig = value.split(".")
    later = f"{int(expiry) + 3600}.{nonce}.{sig}"
    assert not session.valid("admin", later, now)
    for bad in ("", None, "x", "..", f"{expiry}.{nonce}.", "a" * 300, f"abc.{nonce}.{sig}"):
        assert not session.valid("admin", bad, now)


def test_each_session_has_its_own_csrf_token() -> None:
    a, csrf_a = session.issue("admin")
    b, csrf_b = session.issue("admin")
    assert a != b and csrf_a != csrf_b
