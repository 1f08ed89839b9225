"""The latest events this server has seen (`berth events` prints them before following)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from berth.api.auth import require_admin
from berth.api.management import berth
from berth.bootstrap import Container

router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)])
__all__ = ["router"]


@router.get("/events/recent", summary="The latest events this server has seen, oldest first")
async def recent_events(
    request: Request,
    workspace: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    c: Container = Depends(berth),
) -> dict[str, Any]:
    ws_id = (await c.workspaces.get(workspace)).id if workspace else None
    return {"events": request.app.state.event_log.since(ws_id, limit)}
