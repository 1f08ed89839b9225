"""Management reads the dashboard needs beyond the core API: a delivery by its messageId,
the request a delivery carries, and the dead letters of every workspace."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Query

from berth.api.auth import require_admin
from berth.api.management import berth
from berth.bootstrap import Container
from berth.domain.delivery import DeliveryStatus
from berth.domain.errors import NotFound

router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)], tags=["operator"])
__all__ = ["router"]


@router.get(
    "/workspaces/{ref}/deliveries/by-message-id",
    summary="The workspace's delivery of one messageId: of `caller`, or the oldest of any caller",
)
async def delivery_by_message_id(
    ref: str,
    message_id: str = Query(..., min_length=1, max_length=1000),
    caller: str | None = Query(None, max_length=200, description="operator, workspace:<name> …"),
    c: Container = Depends(berth),
) -> dict[str, Any]:
    ws = await c.workspaces.get(ref)
    d = await c.deliveries.find(ws.id, message_id, caller)
    if d is None:
        raise NotFound(
            f"workspace {ws.name} has no delivery of messageId {message_id!r}",
            code="delivery_not_found",
        )
    return d.public()


@router.get(
    "/deliveries/{delivery_id}/request",
    summary="The JSON-RPC request a delivery carries, as the caller sent it",
)
async def delivery_request(delivery_id: str, c: Container = Depends(berth)) -> dict[str, Any]:
    d = await c.deliveries.get(delivery_id)
    try:
        body: Any = json.loads(d.request)
    except ValueError:
        body = d.request.decode("utf-8", "replace")
    return {"delivery_id": d.id, "method": d.method, "headers": d.headers, "request": body}


@router.get("/dead-letters", summary="Dead deliveries of every workspace, newest first")
async def dead_letters(
    limit: int = Query(100, ge=1, le=1000), c: Container = Depends(berth)
) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    await c.roster.refresh()
    for ws in c.roster.all():
        for d in await c.deliveries.recent(ws.id, DeliveryStatus.DEAD, limit):
            out.append({**d.public(), "workspace": ws.name})
    out.sort(key=lambda d: d["finished_at"] or d["created_at"], reverse=True)
    return {"deliveries": out[:limit]}
