"""The application class: the two routes taken at a rate are served ahead of FastAPI's
middleware and route table: the proxy (every message) and agents' heartbeats (50 a
second with 1,000 workspaces, most of an idle berth's CPU). Walking the table and the
framework's per-request middleware cost about a fifth of berth's CPU per message
(docs/benchmarks.md). Both keep the one middleware that matters to them, the body limit,
and answer errors through the same edge (`api/errors.py`). Everything else, lifespan
included, is FastAPI's."""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from berth.api.a2a import a2a_endpoint
from berth.api.agents import beat
from berth.api.errors import error_response, rpc_error_response
from berth.api.lane import HANDOFF_PATH, from_lane_socket, lane_handoff, lane_secret
from berth.api.limits import BodyLimit
from berth.domain.errors import BerthError

log = logging.getLogger("berth.api")
__all__ = ["A2A_PATH", "HEARTBEAT_PATH", "App"]

A2A_PATH = re.compile(r"^/v1/workspaces/([^/]+)/a2a/?$")
HEARTBEAT_PATH = "/v1/agents/heartbeat"
LANE_PREFIX = "/v1/lane/"


class App(FastAPI):
    _fast: BodyLimit | None = None
    _beat: BodyLimit | None = None

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
            if scope["path"].startswith(LANE_PREFIX) and await self._lane(scope, receive, send):
                return
            if scope["path"] == HEARTBEAT_PATH:
                scope["app"] = self
                if self._beat is None:
                    self._beat = BodyLimit(_heartbeat, self.state.berth.settings.max_body_bytes)
                await self._beat(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _lane(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """A hand-off of this berth's fast lane, served; anyone else's request is left to
        FastAPI, to which the path is unknown (404)."""
        lane = self.state.berth.lane
        m = HANDOFF_PATH.match(scope["path"])
        if m is None or lane is None or not from_lane_socket(lane, scope):
            return False
        if not lane.handoff.admits(lane_secret(scope)):
            return False
        scope["app"] = self
        await lane_handoff(lane, m[1], scope, receive, send)
        return True


async def _heartbeat(scope: Scope, receive: Receive, send: Send) -> None:
    """`POST /v1/agents/heartbeat` (api/agents.py documents it in the OpenAPI document)."""
    response: Any
    try:
        result = await beat(Request(scope, receive, send))
        response = Response(orjson.dumps(result), media_type="application/json")
    except BerthError as e:
        response = error_response(e)
    except Exception:  # a bug: answered as the management API's internal error, logged
        log.exception("the heartbeat failed")
        response = error_response(BerthError("internal error"))
    await response(scope, receive, send)


async def _a2a(scope: Scope, receive: Receive, send: Send) -> None:
    response: Any
    try:
        response = await a2a_endpoint(Request(scope, receive, send))
    except Exception:  # a bug: answered as JSON-RPC's internal error, logged with its trace
        log.exception("the A2A proxy failed on %s", scope["path"])
        response = rpc_error_response(BerthError("internal error"))
    await response(scope, receive, send)
