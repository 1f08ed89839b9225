"""The wire between berth and an agent: re-exported from `berth.wire`, the one module the
server and the SDK share (standard library only)."""

from __future__ import annotations

from berth.wire import (
    SEND_METHODS,
    STREAM_METHODS,
    draining_error,
    is_draining_error,
    rpc_error,
    rpc_result,
)

__all__ = [
    "SEND_METHODS",
    "STREAM_METHODS",
    "draining_error",
    "is_draining_error",
    "rpc_error",
    "rpc_result",
]
