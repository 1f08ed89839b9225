"""The application class: the proxy route is served ahead of FastAPI's middleware and
route table. Every message takes that route, and walking the table and the framework's
per-request middleware cost about a fifth of berth's CPU per message (docs/benchmarks.md).
The route keeps the one middleware that matters to it, the body limit. Everything else,
lifespan included, is FastAPI's."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from berth.api.a2a import a2a_endpoint
from berth.api.errors import rpc_error_response
from berth.api.limits import BodyLimit
from berth.domain.errors import BerthError

log = logging.getLogger("berth.api")
__all__ = ["A2A_PATH", "App"]

A2A_PATH = re.compile(r"^/v1/workspaces/([^/]+)/a2a/?$")


class App(FastAPI):
    _fast: BodyLimit | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            m = A2A_PATH.match(scope["path"])
            if m is not None:
                scope["app"] = self
                scope["path_params"] = {"ref": m[1]}
                if self._fast is None:  # the limit is known once the app is built
                    self._fast = BodyLimit(_a2a, self.state.berth.settings.max_body_bytes)
                await self._fast(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


async def _a2a(scope: Scope, receive: Receive, send: Send) -> None:
    response: Any
    try:
        response = await a2a_endpoint(Request(scope, receive, send))
    except Exception:  # a bug: answered as JSON-RPC's internal error, logged with its trace
        log.exception("the A2A proxy failed on %s", scope["path"])
        response = rpc_error_response(BerthError("internal error"))
    await response(scope, receive, send)
