"""The OpenAPI document, made to tell the truth (issue 10): who may call each operation
(security schemes), every error status berth answers with its error body
(`{"error": {"code", "message"}}`, api/errors.py) rather than FastAPI's validation shape,
which berth never sends, typed success bodies (`api/schemas.py`), and the A2A proxy's
routes (`api/openapi_a2a.py`), which are plain Starlette routes FastAPI does not see."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from berth.api.openapi_a2a import A2A_PATHS, A2A_SCHEMAS, CALLER_SCHEME
from berth.api.schemas import SCHEMAS, SUCCESS

__all__ = ["install"]

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "machine-readable, e.g. invalid_token"},
                "message": {"type": "string"},
            },
        }
    },
}
SCHEMES = {
    "admin": {
        "type": "http",
        "scheme": "bearer",
        "description": "the operator's admin token (BERTH_ADMIN_TOKEN or <data dir>/admin_token)",
    },
    "agent": {
        "type": "http",
        "scheme": "bearer",
        "description": "an agent's run credential (process, Docker) or agent credential (external)",
    },
    "caller": CALLER_SCHEME,
}
WHY = {
    "400": "malformed JSON, or an agent URL the policy refuses (agent_url_refused)",
    "401": "no credential, or an unknown, rotated or revoked one",
    "403": "a credential of another role",
    "404": "no such workspace, delivery, restart or credential",
    "409": "the resource is in a state that does not allow this",
    "413": "the body is over BERTH_MAX_BODY_BYTES",
    "422": "the input is invalid",
    "503": "the database or the shared lock service is unavailable; retry",
}


def _statuses(path: str, method: str, op: dict[str, Any]) -> list[str]:
    out = ["401", "403", "413", "422", "503"]
    if method in ("post", "put", "patch"):
        out.append("400")
    names = {p.get("name") for p in op.get("parameters", [])}
    if "{" in path or "workspace" in names or path == "/v1/credentials" and method == "post":
        out.append("404")  # a workspace, delivery, restart or credential named in the request
    if method in ("post", "delete") and path != "/v1/agents/heartbeat":
        out.append("409")
    return sorted(out)


def _success(responses: dict[str, Any], typed: tuple[str, str] | None) -> None:
    """The operation's success body as its schema (FastAPI wrote `{}` for a dict)."""
    if typed is None:
        return
    status, name = typed
    ok = responses.setdefault(status, {"description": "success"})
    if name.startswith("text/"):  # a stream or text, not JSON
        ok["content"] = {name: {"schema": {"type": "string"}}}
    else:
        ok["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def install(app: FastAPI) -> None:
    def document() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        comps = doc.setdefault("components", {})
        schemas = comps.setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        schemas["Error"] = ERROR
        schemas.update(SCHEMAS)
        schemas.update(A2A_SCHEMAS)
        comps["securitySchemes"] = SCHEMES
        ref = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for path, ops in doc.get("paths", {}).items():
            for method, op in ops.items():
                op["security"] = (
                    [{"agent": []}] if path.startswith("/v1/agents/") else [{"admin": []}]
                )
                responses = op.setdefault("responses", {})
                _success(responses, SUCCESS.get((method, path)))
                for status in _statuses(path, method, op):
                    responses[status] = {"description": WHY[status], "content": ref}
        doc["paths"].update(A2A_PATHS)
        app.openapi_schema = doc
        return doc

    app.openapi = document  # type: ignore[method-assign]
