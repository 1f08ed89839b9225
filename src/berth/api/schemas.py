"""The management and agent APIs' success bodies as JSON Schemas (the OpenAPI document's
`components.schemas`; `api/openapi.py` attaches them to each operation). Objects allow
extra properties (a newer berth may add fields); what is listed is what berth answers."""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMAS", "SUCCESS"]

S: dict[str, Any] = {"type": "string"}
N: dict[str, Any] = {"type": "number"}
INT: dict[str, Any] = {"type": "integer"}
B: dict[str, Any] = {"type": "boolean"}
ANY: dict[str, Any] = {}
OBJ: dict[str, Any] = {"type": "object"}
STRS: dict[str, Any] = {"type": "array", "items": S}


def _null(t: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [t, {"type": "null"}]}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _list(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
    }


WORKSPACE = _obj(
    {
        "id": S,
        "name": S,
        "runtime": {"type": "string", "enum": ["process", "docker", "external"]},
        "status": S,
        "url": _null(S),
        "command": _null(STRS),
        "image": _null(S),
        "env": STRS,
        "max_concurrency": INT,
        "drain_seconds": N,
        "restart_policy": S,
        "card": {"type": "string", "enum": ["public", "callers"]},
        "active_tasks": INT,
        "capabilities": OBJ,
        "last_heartbeat": _null(N),
        "restart_count": INT,
        "crash_count": INT,
        "last_error": _null(S),
        "allowed_callers": STRS,
        "created_at": N,
        "version": INT,
        "restart_mode": {"type": "string", "enum": ["stop-first", "replace"]},
        "peer": _null(_ref("Instance")),
    },
    {
        "queue_depth": INT,
        "in_flight": INT,
        "queue_age_seconds": _null(N),
        "idle_suspend_seconds": N,
        "max_queue": INT,
        "max_queue_age": N,
        "pid": _null(INT),
        "state_dir": _null(S),
        "container": S,
    },
)
DELIVERY = _obj(
    {
        "id": S,
        "workspace_id": S,
        "message_id": S,
        "caller": S,
        "method": S,
        "status": S,
        "attempts": INT,
        "forwards": INT,
        "reason": _null(S),
        "created_at": N,
        "first_forwarded_at": _null(N),
        "finished_at": _null(N),
        "reply": ANY,
    },
    {"workspace": S},
)
RESTART = _obj(
    {
        "id": S,
        "workspace_id": S,
        "trigger": S,
        "reason": _null(S),
        "drain_seconds": N,
        "phase": S,
        "phases": {"type": "array", "items": OBJ},
        "drain_report": _null(OBJ),
        "error": _null(S),
        "created_at": N,
        "finished_at": _null(N),
        "mode": {"type": "string", "enum": ["stop-first", "replace"]},
        "versions": _null(OBJ),
        "seconds": _null(N),
    },
    {"joined": B},
)
INSTANCE = _obj(
    {
        "version": INT,
        "role": {"type": "string", "enum": ["next", "old"]},
        "url": _null(S),
        "command": _null(STRS),
        "image": _null(S),
        "env": STRS,
        "pid": _null(INT),
        "started_at": N,
        "registered_at": _null(N),
        "canary": _null(INT),
    }
)
CREDENTIAL = _obj(
    {
        "id": S,
        "subject": S,
        "role": {"type": "string", "enum": ["caller", "agent"]},
        "workspace_id": _null(S),
        "created_at": N,
        "rotated_at": _null(N),
        "revoked_at": _null(N),
        "status": {"type": "string", "enum": ["active", "revoked"]},
    },
    {"secret": S},
)

SCHEMAS: dict[str, Any] = {
    "Workspace": WORKSPACE,
    "WorkspaceCreated": {
        "allOf": [_ref("Workspace"), _obj({"token": S}, {"agent_token": S})],
        "description": "the workspace and its credentials, shown once",
    },
    "WorkspaceList": _obj({"workspaces": _list("Workspace")}),
    "WorkspaceStopped": _obj({"workspace": _ref("Workspace"), "drain_report": _null(OBJ)}),
    "WorkspaceResumed": _obj({"workspace": _ref("Workspace"), "restart": _ref("Restart")}),
    "WorkspaceRemoved": _obj({"workspace": _ref("Workspace"), "canceled": _list("Delivery")}),
    "Instance": INSTANCE,
    "Delivery": DELIVERY,
    "DeliveryList": _obj({"deliveries": _list("Delivery")}),
    "DeliveryRequest": _obj({"delivery_id": S, "method": S, "headers": OBJ, "request": ANY}),
    "Restart": RESTART,
    "RestartList": _obj({"restarts": _list("Restart")}),
    "Events": _obj({"events": {"type": "array", "items": OBJ}}),
    "Credential": CREDENTIAL,
    "CredentialList": _obj({"credentials": _list("Credential")}),
    "AllowList": _obj({"workspace": S, "allowed_callers": STRS}),
    "Registered": _obj({"workspace_id": S, "name": S, "heartbeat_seconds": N}),
    "Heartbeat": _obj({"ok": B, "reregister": B, "heartbeat_seconds": N}, {"resume": B}),
}

# (method, path) -> (success status, schema, or the media type of a text body)
SUCCESS: dict[tuple[str, str], tuple[str, str]] = {
    ("post", "/v1/workspaces"): ("201", "WorkspaceCreated"),
    ("get", "/v1/workspaces"): ("200", "WorkspaceList"),
    ("get", "/v1/workspaces/{ref}"): ("200", "Workspace"),
    ("delete", "/v1/workspaces/{ref}"): ("200", "WorkspaceRemoved"),
    ("post", "/v1/workspaces/{ref}/restart"): ("202", "Restart"),
    ("post", "/v1/workspaces/{ref}/deploy"): ("202", "Restart"),
    ("post", "/v1/workspaces/{ref}/deploy/{decision}"): ("202", "Restart"),
    ("get", "/v1/workspaces/{ref}/restarts"): ("200", "RestartList"),
    ("get", "/v1/workspaces/{ref}/restarts/{restart_id}"): ("200", "Restart"),
    ("post", "/v1/workspaces/{ref}/pause"): ("200", "WorkspaceStopped"),
    ("post", "/v1/workspaces/{ref}/resume"): ("200", "WorkspaceResumed"),
    ("get", "/v1/workspaces/{ref}/deliveries"): ("200", "DeliveryList"),
    ("get", "/v1/workspaces/{ref}/deliveries/by-message-id"): ("200", "Delivery"),
    ("get", "/v1/deliveries/{delivery_id}"): ("200", "Delivery"),
    ("get", "/v1/deliveries/{delivery_id}/request"): ("200", "DeliveryRequest"),
    ("post", "/v1/deliveries/{delivery_id}/retry"): ("200", "Delivery"),
    ("post", "/v1/deliveries/{delivery_id}/cancel"): ("200", "Delivery"),
    ("get", "/v1/dead-letters"): ("200", "DeliveryList"),
    ("get", "/v1/events/recent"): ("200", "Events"),
    ("get", "/v1/events"): ("200", "text/event-stream"),
    ("get", "/v1/credentials"): ("200", "CredentialList"),
    ("post", "/v1/credentials"): ("201", "Credential"),
    ("post", "/v1/credentials/{ref}/rotate"): ("200", "Credential"),
    ("post", "/v1/credentials/{ref}/revoke"): ("200", "Credential"),
    ("post", "/v1/workspaces/{ref}/allow"): ("200", "AllowList"),
    ("post", "/v1/workspaces/{ref}/deny"): ("200", "AllowList"),
    ("post", "/v1/agents/register"): ("200", "Registered"),
    ("post", "/v1/agents/heartbeat"): ("200", "Heartbeat"),
}
