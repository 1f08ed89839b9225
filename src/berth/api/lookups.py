"""Look-ups for operators: one delivery by id or messageId with its request, recent events."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from berth.api.auth import require_admin
from berth.bootstrap import Container
from berth.domain.delivery import Delivery
from berth.domain.errors import NotFound

router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)])
__all__ = ["router"]


def berth(request: Request) -> Container:
    c: Container = request.app.state.berth
    return c


@router.get(
    "/workspaces/{ref}/deliveries/{key}",
    summary="One delivery of a workspace, by delivery id or messageId, with its request",
)
async def find_delivery(ref: str, key: str, c: Container = Depends(berth)) -> dict[str, Any]:
    ws = await c.workspaces.get(ref)
    d: Delivery | None = None
    try:
        d = await c.store.get_delivery(key)
    except NotFound:
        d = None
    if d is None or d.workspace_id != ws.id:
        d = await c.store.find_delivery(ws.id, key)
    if d is None:
        raise NotFound(f"workspace {ws.name} has no delivery with id or messageId {key!r}")
    try:
        request = json.loads(d.request)
    except ValueError:
        request = d.request.decode(errors="replace")
    return {**d.public(), "workspace": ws.name, "request": request}


@router.get("/events/recent", summary="The latest events this server has seen, oldest first")
async def recent_events(
    request: Request,
    workspace: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    c: Container = Depends(berth),
) -> dict[str, Any]:
    ws_id = (await c.workspaces.get(workspace)).id if workspace else None
    return {"events": request.app.state.event_log.since(ws_id, limit)}
