"""The domain's own exception tree. Errors carry a machine-readable `code` and a message;
what HTTP status or JSON-RPC code each becomes is decided at the API edge, in one table
(`berth.api.errors.EDGE`), for the management API, the proxy and the agent card alike.

    BerthError
    ├── NotFound
    ├── Conflict
    │   └── IllegalTransition       a move the state table forbids
    ├── InvalidInput
    │   ├── MalformedBody           the body is not JSON at all
    │   ├── TooLarge                the body is over the limit
    │   ├── UrlRefused              an agent URL the agent URL policy refuses (400)
    │   └── RpcInvalid              a JSON-RPC envelope problem, with its JSON-RPC code
    │       ├── InvalidHeader       ... caused by an HTTP header (X-Berth-Wait, X-Berth-TTL)
    │       └── MessageIdReused     a caller's messageId sent again with another request
    ├── Unauthorized / Forbidden
    ├── StartFailed                 a workspace's runtime could not be started
    ├── Overloaded                  a workspace's queue is full: try again later
    └── Unavailable
        ├── StoreUnavailable        the database cannot be reached (nothing was accepted)
        ├── LocksUnavailable        the shared lock service cannot be reached
        └── AgentUnreachable        a transport failure talking to an agent
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AgentUnreachable",
    "BerthError",
    "Conflict",
    "Forbidden",
    "IllegalTransition",
    "InvalidHeader",
    "InvalidInput",
    "MessageIdReused",
    "LocksUnavailable",
    "MalformedBody",
    "NotFound",
    "Overloaded",
    "RpcInvalid",
    "StartFailed",
    "StoreUnavailable",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UrlRefused",
]


class BerthError(Exception):
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(BerthError):
    code = "not_found"


class Conflict(BerthError):
    code = "conflict"


class IllegalTransition(Conflict):
    code = "illegal_transition"


class InvalidInput(BerthError):
    code = "invalid_input"


class MalformedBody(InvalidInput):
    code = "invalid_json"


class TooLarge(InvalidInput):
    code = "too_large"


class UrlRefused(InvalidInput):
    """An agent URL the agent URL policy refuses (services.url_policy): nothing was sent."""

    code = "agent_url_refused"


class RpcInvalid(InvalidInput):
    """A JSON-RPC request berth cannot take: parse error (-32700), invalid request
    (-32600) or invalid params (-32602). `rpc_code` is the JSON-RPC code; `request_id`
    the request's id when it could be read."""

    code = "invalid_request"

    def __init__(self, rpc_code: int, message: str, *, request_id: Any = None) -> None:
        super().__init__(message)
        self.rpc_code = rpc_code
        self.request_id = request_id


class InvalidHeader(RpcInvalid):
    """A berth header of a JSON-RPC request is wrong (the body may be fine)."""

    code = "invalid_header"


class MessageIdReused(RpcInvalid):
    """The same caller sent a known messageId with a different request (-32602)."""

    code = "message_id_reused"


class Unauthorized(BerthError):
    code = "unauthorized"


class Forbidden(BerthError):
    code = "forbidden"


class StartFailed(BerthError):
    code = "start_failed"


class Overloaded(BerthError):
    """Admission control: the workspace's queue is over its limit (depth or age of its
    oldest message), so a new message is refused rather than accepted without bound.
    Nothing was accepted; the caller may retry after `retry_after` seconds."""

    code = "queue_full"

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(BerthError):
    code = "unavailable"


class StoreUnavailable(Unavailable):
    """The database could not be reached: nothing was accepted, so the caller may retry."""

    code = "store_unavailable"


class LocksUnavailable(Unavailable):
    """The shared lock service (Redis) could not be reached. A lease taken before it stays
    held until its ttl runs out."""

    code = "locks_unavailable"


class AgentUnreachable(Unavailable):
    """The agent could not be reached or the connection broke: a transport failure.

    `reached=False` when the request certainly never got to the agent (connection refused,
    no such host, no URL): such a failure says nothing about the message."""

    code = "agent_unreachable"

    def __init__(self, message: str = "", *, reached: bool = True) -> None:
        super().__init__(message or "the agent could not be reached")
        self.reached = reached
