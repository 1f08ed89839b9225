"""The management API: workspaces, restarts, deliveries, events (operator token)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from berth.api.auth import require_admin
from berth.bootstrap import Container
from berth.domain.delivery import DeliveryStatus
from berth.domain.deploy import RestartMode
from berth.domain.errors import InvalidInput, MalformedBody
from berth.services.events import EVENT_TOPIC, unpack

router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)])
__all__ = ["berth", "body_doc", "json_body", "router"]


def berth(request: Request) -> Container:
    c: Container = request.app.state.berth
    return c


class WorkspaceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="unique; lowercase letters, digits and '-'")
    runtime: Literal["process", "docker", "external"] = "process"
    command: list[str] | None = Field(None, description="argv (process; optional for docker)")
    image: str | None = Field(None, description="container image (docker)")
    url: str | None = Field(None, description="agent URL (external; optional, the agent registers)")
    env: dict[str, str] = {}
    max_concurrency: int = 1
    drain_seconds: float = 30
    restart_policy: Literal["on-failure", "always", "never"] = "on-failure"
    memory: str | None = Field(None, description="memory limit (docker), e.g. 512m")
    cpus: float | None = Field(None, description="CPU limit (docker)")
    card: Literal["public", "callers"] = Field(
        "callers", description="who may read the agent card without a token"
    )
    allowed_callers: list[str] = Field(
        [], description="who besides the operator may call it: '*', workspace names, caller:<name>"
    )


class RestartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    drain_seconds: float | None = Field(None, ge=0, le=3600)
    reason: str | None = Field(None, max_length=500)
    mode: Literal["stop-first", "replace"] | None = Field(
        None, description="default: the workspace's restart_mode"
    )


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: list[str] | None = Field(None, description="the new argv (process)")
    image: str | None = Field(None, description="the new image (docker)")
    env: dict[str, str] | None = Field(None, description="merged into the current env")
    restart_mode: Literal["stop-first", "replace"] | None = Field(
        None, description="the spec's new default for later restarts and deploys"
    )
    mode: Literal["stop-first", "replace"] | None = Field(
        None, description="how this deploy runs; default: the workspace's restart_mode"
    )
    drain_seconds: float | None = Field(None, ge=0, le=3600)
    reason: str | None = Field(None, max_length=500)
    canary: int | None = Field(None, ge=1, le=99, description="percent of new messages")
    canary_seconds: float | None = Field(None, gt=0, le=86400, description="default 60")


async def json_body(request: Request) -> Any:
    """The body as JSON, whatever Content-Type the caller sent (curl -d sends a form type)."""
    raw = await request.body()
    try:
        return orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise MalformedBody("the body is not valid JSON") from None


def body_doc(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """An operation's request body in the OpenAPI document, as `model` describes it (the
    routes read their bodies themselves, whatever Content-Type: FastAPI does not see them).
    `required=False`: an empty body is taken as {}."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    body = {"required": required, "content": {"application/json": {"schema": schema}}}
    return {"requestBody": body}


@router.post(
    "/workspaces",
    status_code=201,
    summary="Create and start a workspace",
    openapi_extra=body_doc(WorkspaceCreate),
)
async def create_workspace(request: Request, c: Container = Depends(berth)) -> JSONResponse:
    ws, secrets = await c.workspaces.create(await json_body(request))
    out = await c.deliveries.status_of(ws)
    return JSONResponse({**out, **secrets}, status_code=201)


@router.get("/workspaces", summary="List workspaces")
async def list_workspaces(c: Container = Depends(berth)) -> Response:
    # orjson straight to bytes: FastAPI's encoder took longer than the list itself
    body = orjson.dumps({"workspaces": await c.workspaces.list()})
    return Response(body, media_type="application/json")


@router.get("/workspaces/{ref}", summary="Show a workspace")
async def show_workspace(ref: str, c: Container = Depends(berth)) -> dict[str, Any]:
    return await c.workspaces.show(ref)


@router.delete("/workspaces/{ref}", summary="Stop and remove; pending deliveries are canceled")
async def remove_workspace(ref: str, c: Container = Depends(berth)) -> dict[str, Any]:
    return await c.workspaces.remove(ref)


@router.post(
    "/workspaces/{ref}/restart",
    status_code=202,
    summary="Restart with drain (joined if running)",
    openapi_extra=body_doc(RestartRequest, required=False),
)
async def restart_workspace(
    ref: str, request: Request, c: Container = Depends(berth)
) -> JSONResponse:
    try:
        body = RestartRequest.model_validate(await json_body(request))
    except ValueError as e:
        raise InvalidInput(f"restart body: {_first_error(e)}") from None
    record, joined = await c.workspaces.restart(
        ref,
        reason=body.reason,
        drain_seconds=body.drain_seconds,
        mode=None if body.mode is None else RestartMode(body.mode),
    )
    return JSONResponse({**record.public(), "joined": joined}, status_code=202)


@router.post(
    "/workspaces/{ref}/deploy",
    status_code=202,
    summary="Deploy a new version (start before stop in replace mode)",
    openapi_extra=body_doc(DeployRequest, required=False),
)
async def deploy_workspace(
    ref: str, request: Request, c: Container = Depends(berth)
) -> JSONResponse:
    record = await c.workspaces.deploy(ref, await json_body(request))
    return JSONResponse({**record.public(), "joined": False}, status_code=202)


@router.post(
    "/workspaces/{ref}/deploy/{decision}",
    status_code=202,
    summary="Promote or roll back the running canary by hand",
)
async def decide_canary(
    ref: str, decision: Literal["promote", "rollback"], c: Container = Depends(berth)
) -> JSONResponse:
    record = await c.workspaces.decide(ref, decision)
    return JSONResponse(record.public(), status_code=202)


@router.get("/workspaces/{ref}/restarts", summary="Restart records, newest first")
async def list_restarts(
    ref: str, limit: int = Query(50, ge=1, le=500), c: Container = Depends(berth)
) -> dict[str, Any]:
    ws = await c.workspaces.get(ref)
    return {"restarts": [r.public() for r in await c.store.list_restarts(ws.id, limit)]}


@router.get("/workspaces/{ref}/restarts/{restart_id}", summary="One restart record")
async def show_restart(ref: str, restart_id: str, c: Container = Depends(berth)) -> dict[str, Any]:
    ws = await c.workspaces.get(ref)
    return (await c.store.get_restart(ws.id, restart_id)).public()


@router.post("/workspaces/{ref}/pause", summary="Drain and stop; messages are held")
async def pause_workspace(ref: str, c: Container = Depends(berth)) -> dict[str, Any]:
    return await c.workspaces.pause(ref)


@router.post("/workspaces/{ref}/resume", summary="Start a paused workspace and deliver what waited")
async def resume_workspace(ref: str, c: Container = Depends(berth)) -> dict[str, Any]:
    return await c.workspaces.resume(ref)


@router.get("/workspaces/{ref}/deliveries", summary="The workspace's delivery log")
async def list_deliveries(
    ref: str,
    status: DeliveryStatus | None = None,
    limit: int = Query(100, ge=1, le=1000),
    c: Container = Depends(berth),
) -> dict[str, Any]:
    ws = await c.workspaces.get(ref)
    return {"deliveries": [d.public() for d in await c.deliveries.recent(ws.id, status, limit)]}


@router.get(
    "/workspaces/{ref}/logs",
    summary="The tail of the workspace's log",
    response_class=PlainTextResponse,
)
async def workspace_logs(
    ref: str, tail: int = Query(200, ge=1, le=100000), c: Container = Depends(berth)
) -> PlainTextResponse:
    ws = await c.workspaces.get(ref)
    p = c.runner.provisioner(ws)
    text = "" if p is None else await p.logs(ws, tail)
    return PlainTextResponse(text)


@router.get("/deliveries/{delivery_id}", summary="One delivery, with the agent's reply once done")
async def show_delivery(delivery_id: str, c: Container = Depends(berth)) -> dict[str, Any]:
    return (await c.deliveries.get(delivery_id)).public()


@router.post(
    "/deliveries/{delivery_id}/retry", summary="Queue a dead, canceled or expired delivery again"
)
async def retry_delivery(delivery_id: str, c: Container = Depends(berth)) -> dict[str, Any]:
    return (await c.deliveries.retry(delivery_id)).public()


@router.post(
    "/deliveries/{delivery_id}/cancel", summary="Cancel a delivery still waiting in the queue"
)
async def cancel_delivery(delivery_id: str, c: Container = Depends(berth)) -> dict[str, Any]:
    return (await c.deliveries.cancel(delivery_id, "canceled by an operator")).public()


@router.get("/events", summary="Server-sent events: workspace and delivery lifecycle")
async def events(
    request: Request, workspace: str | None = None, c: Container = Depends(berth)
) -> StreamingResponse:
    ws_id = (await c.workspaces.get(workspace)).id if workspace else None
    sub = c.bus.subscribe(EVENT_TOPIC + "*")

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b": berth events\n\n"
            while True:
                try:
                    topic, payload = await asyncio.wait_for(sub.__anext__(), 15.0)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                for kind, event in unpack(topic, payload):
                    if ws_id and event.get("workspace_id") != ws_id:
                        continue
                    yield f"event: {kind}\ndata: {json.dumps(event)}\n\n".encode()
        finally:
            with contextlib.suppress(Exception):
                await sub.aclose()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


def _first_error(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        for err in errors():
            loc = ".".join(str(x) for x in err.get("loc", ()))
            return f"{loc}: {err.get('msg')}" if loc else str(err.get("msg"))
    return str(e)
