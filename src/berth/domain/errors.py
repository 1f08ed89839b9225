"""The domain's own exception tree; the API edge maps each to an HTTP status and code.

BerthError
├── NotFound              (404 not_found)
├── Conflict              (409 conflict)
│   └── IllegalTransition (409 illegal_transition)
├── InvalidInput          (400/422 invalid_input)
├── Unauthorized          (401 unauthorized) / Forbidden (403 forbidden)
└── Unavailable           (503 unavailable)
    └── LocksUnavailable  (503 locks_unavailable): the shared lock service is unreachable
"""

from __future__ import annotations


class BerthError(Exception):
    code = "internal_error"
    status = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class NotFound(BerthError):
    code = "not_found"
    status = 404


class Conflict(BerthError):
    code = "conflict"
    status = 409


class IllegalTransition(Conflict):
    code = "illegal_transition"


class InvalidInput(BerthError):
    code = "invalid_input"
    status = 422


class Unauthorized(BerthError):
    code = "unauthorized"
    status = 401


class Forbidden(BerthError):
    code = "forbidden"
    status = 403


class Unavailable(BerthError):
    code = "unavailable"
    status = 503


class StoreUnavailable(Unavailable):
    """The database could not be reached: nothing was accepted, so the caller may retry."""

    code = "store_unavailable"


class LocksUnavailable(Unavailable):
    """The shared lock service (Redis) could not be reached. A lease taken before it stays
    held until its ttl runs out."""

    code = "locks_unavailable"
