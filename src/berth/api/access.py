"""Credentials and allow-lists (operator token): `berth creds …` and `berth ws allow …`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from berth.api.auth import require_admin
from berth.api.management import berth, body_doc, json_body
from berth.bootstrap import Container
from berth.domain.errors import InvalidInput

router = APIRouter(prefix="/v1", dependencies=[Depends(require_admin)], tags=["access"])
__all__ = ["router"]


class CredentialCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="a named caller credential: caller:<name>")
    agent: str | None = Field(None, description="an external workspace's agent credential")


class Callers(BaseModel):
    model_config = ConfigDict(extra="forbid")
    callers: list[str] = Field(description="'*', workspace names, workspace:<name>, caller:<name>")


@router.get("/credentials", summary="Caller and agent credentials (never their secrets)")
async def list_credentials(c: Container = Depends(berth)) -> dict[str, Any]:
    return {"credentials": await c.access.all()}


@router.post(
    "/credentials",
    status_code=201,
    summary="A named caller credential, or an external agent's credential (secret shown once)",
    openapi_extra=body_doc(CredentialCreate),
)
async def create_credential(request: Request, c: Container = Depends(berth)) -> JSONResponse:
    body = await json_body(request)
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if v is not None}
    return JSONResponse(await c.access.create(body), status_code=201)


@router.post("/credentials/{ref}/rotate", summary="A new secret (shown once); the old one stops")
async def rotate_credential(ref: str, c: Container = Depends(berth)) -> dict[str, Any]:
    return await c.access.rotate(ref)


@router.post("/credentials/{ref}/revoke", summary="Refuse this credential from now on")
async def revoke_credential(ref: str, c: Container = Depends(berth)) -> dict[str, Any]:
    return await c.access.revoke(ref)


async def _callers(request: Request) -> Any:
    """The body's `callers`, its one field (as the Callers schema says): another field, or
    a body that is not an object, is refused rather than ignored."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidInput('the body is {"callers": [...]}')
    unknown = set(body) - {"callers"}
    if unknown:
        raise InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    return body.get("callers")


@router.post(
    "/workspaces/{ref}/allow",
    summary="Let these callers call the workspace",
    openapi_extra=body_doc(Callers),
)
async def allow(ref: str, request: Request, c: Container = Depends(berth)) -> dict[str, Any]:
    ws = await c.access.allow(ref, await _callers(request))
    return {"workspace": ws.name, "allowed_callers": ws.allowed_callers}


@router.post(
    "/workspaces/{ref}/deny",
    summary="Take callers off the workspace's allow-list",
    openapi_extra=body_doc(Callers),
)
async def deny(ref: str, request: Request, c: Container = Depends(berth)) -> dict[str, Any]:
    ws = await c.access.deny(ref, await _callers(request))
    return {"workspace": ws.name, "allowed_callers": ws.allowed_callers}
