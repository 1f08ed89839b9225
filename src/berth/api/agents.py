"""The agent-facing API: registration and heartbeats, with an agent's run credential or
agent credential (services.access; caller credentials are refused)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request

from berth.api.auth import bearer
from berth.domain.errors import MalformedBody

router = APIRouter(prefix="/v1/agents")
__all__ = ["beat", "router"]


async def _json(request: Request) -> Any:
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise MalformedBody("the body is not valid JSON") from None


@router.post("/register", summary="An agent announces where it listens (run or agent credential)")
async def register(request: Request) -> dict[str, Any]:
    c = request.app.state.berth
    result: dict[str, Any] = await c.registry.register(bearer(request), await _json(request))
    return result


async def beat(request: Request) -> dict[str, Any]:
    """A heartbeat's answer. api/fast.py serves this path ahead of FastAPI (it comes at a
    rate) by calling this; the route below stays for the OpenAPI document."""
    c = request.app.state.berth
    result: dict[str, Any] = await c.registry.heartbeat(bearer(request), await _json(request))
    return result


@router.post("/heartbeat", summary="An agent reports it is alive (run or agent credential)")
async def heartbeat(request: Request) -> dict[str, Any]:
    return await beat(request)
