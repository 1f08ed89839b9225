"""The agent-facing API: registration and heartbeats, with an agent's run credential or
agent credential (services.access; caller credentials are refused)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request

from berth.api.auth import bearer
from berth.domain.errors import MalformedBody

router = APIRouter(prefix="/v1/agents")
__all__ = ["agent_json", "router"]


async def agent_json(request: Request) -> Any:
    try:
        return orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise MalformedBody("the body is not valid JSON") from None


@router.post("/register", summary="An agent announces where it listens (run or agent credential)")
async def register(request: Request) -> dict[str, Any]:
    c = request.app.state.berth
    result: dict[str, Any] = await c.registry.register(bearer(request), await agent_json(request))
    return result


@router.post("/heartbeat", summary="An agent reports it is alive (run or agent credential)")
async def heartbeat(request: Request) -> dict[str, Any]:
    # api/fast.py answers this path ahead of FastAPI (it comes at a rate) with the same
    # code; the route stays for the OpenAPI document
    c = request.app.state.berth
    result: dict[str, Any] = await c.registry.heartbeat(bearer(request), await agent_json(request))
    return result
