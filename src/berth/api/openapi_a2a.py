"""The A2A proxy's routes in the OpenAPI document: JSON-RPC, the HTTP+JSON binding and
the agent card (plain Starlette routes in `api/app.py`, so written out here). Their error
bodies are the bindings' own: a JSON-RPC error object (`data.reason` is berth's code) or
an HTTP+JSON error body; the statuses are the error edge's (`api/errors.EDGE`)."""

from __future__ import annotations

from typing import Any

__all__ = ["A2A_PATHS", "A2A_SCHEMAS", "CALLER_SCHEME"]

CALLER_SCHEME = {
    "type": "http",
    "scheme": "bearer",
    "description": "the admin token, or a caller credential (workspace:<name>, caller:<name>) "
    "on the workspace's allow-list",
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


A2A_SCHEMAS: dict[str, Any] = {
    "JsonRpcRequest": {
        "type": "object",
        "required": ["jsonrpc", "method"],
        "properties": {
            "jsonrpc": {"const": "2.0"},
            "id": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]},
            "method": {
                "type": "string",
                "description": "either A2A vocabulary: message/send, SendMessage, tasks/get, …",
            },
            "params": {"type": "object"},
        },
    },
    "JsonRpcResponse": {
        "type": "object",
        "required": ["jsonrpc"],
        "properties": {
            "jsonrpc": {"const": "2.0"},
            "id": {},
            "result": {"description": "the agent's answer, as it gave it"},
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "integer", "description": "-32602: a messageId reused"},
                    "message": {"type": "string"},
                    "data": {
                        "type": "object",
                        "properties": {"reason": {"type": "string"}},
                        "description": "berth's own errors: reason is its code "
                        "(caller_not_allowed, invalid_token, workspace_not_found, …)",
                    },
                },
            },
        },
    },
    "Accepted": {
        "type": "object",
        "required": ["delivery_id", "status", "status_url"],
        "properties": {
            "delivery_id": {"type": "string"},
            "status": {"type": "string"},
            "status_url": {"type": "string"},
        },
        "description": "X-Berth-Wait passed before the reply: the message is in the log",
    },
    "RestError": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "object"}},
        "description": "an HTTP+JSON error body: {code, status, message, details}",
    },
    "AgentCard": {"type": "object", "description": "the agent's card, with berth's URLs"},
}

_REF = {"name": "ref", "in": "path", "required": True, "schema": {"type": "string"}}
_WAIT = {
    "name": "X-Berth-Wait",
    "in": "header",
    "schema": {"type": "number", "minimum": 0, "maximum": 86400},
    "description": "seconds to hold the request for the reply; 0: answer 202 at once",
}
_TTL = {
    "name": "X-Berth-TTL",
    "in": "header",
    "schema": {"type": "number", "exclusiveMinimum": 0},
    "description": "expire the message if it has not been delivered by then",
}
_WHY = {
    "400": "a bad X-Berth-Wait / X-Berth-TTL (HTTP+JSON: any malformed request)",
    "401": "no credential, or an unknown, rotated or revoked one (invalid_token)",
    "403": "an agent credential (wrong_role), or a caller not on the allow-list "
    "(caller_not_allowed)",
    "404": "no such workspace",
    "413": "the body is over BERTH_MAX_BODY_BYTES",
    "429": "the workspace's queue is full (max_queue, max_queue_age); retry later",
    "502": "the agent could not be reached",
    "503": "the workspace is not online (held up to X-Berth-Wait), or the database is away",
}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


def _errors(body: str, statuses: tuple[str, ...]) -> dict[str, Any]:
    return {s: {"description": _WHY[s], "content": _json(body)} for s in statuses}


_ALL = ("400", "401", "403", "404", "413", "429", "502", "503")
_CALLER: list[dict[str, list[str]]] = [{"caller": []}]

_JSONRPC = {
    "post": {
        "operationId": "a2a_jsonrpc",
        "summary": "A2A over JSON-RPC (either vocabulary): sends go through the delivery log",
        "tags": ["a2a"],
        "security": _CALLER,
        "parameters": [_REF, _WAIT, _TTL],
        "requestBody": {"required": True, "content": _json("JsonRpcRequest")},
        "responses": {
            "200": {
                "description": "the agent's JSON-RPC answer (a stream as SSE), or a JSON-RPC "
                "error about the request (-32700, -32600, -32602 incl. a reused messageId)",
                "content": {
                    **_json("JsonRpcResponse"),
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            },
            "202": {"description": "accepted, not answered yet", "content": _json("Accepted")},
            **_errors("JsonRpcResponse", _ALL),
        },
    }
}

_REST_OP = {
    "summary": "A2A's HTTP+JSON binding: message:send / message:stream go through the "
    "delivery log (a reused messageId with another body: 400), the rest pass through",
    "tags": ["a2a"],
    "security": _CALLER,
    "parameters": [
        _REF,
        {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}},
        _WAIT,
        _TTL,
    ],
    "responses": {
        "200": {"description": "the agent's answer (application/a2a+json, or SSE)"},
        "202": {"description": "accepted, not answered yet", "content": _json("Accepted")},
        **_errors("RestError", _ALL),
    },
}

_CARD = {
    "get": {
        "operationId": "a2a_agent_card",
        "summary": "The agent card, with berth's interface URLs and security scheme",
        "tags": ["a2a"],
        "security": [{}, *_CALLER],  # a workspace created with card: public needs none
        "parameters": [_REF],
        "responses": {
            "200": {"description": "the card", "content": _json("AgentCard")},
            "304": {"description": "If-None-Match matched its ETag"},
            **_errors("Error", ("401", "403", "404", "503")),
        },
    }
}

A2A_PATHS: dict[str, Any] = {
    "/v1/workspaces/{ref}/a2a": _JSONRPC,
    "/v1/workspaces/{ref}/a2a/rest/{path}": {
        m: {**_REST_OP, "operationId": f"a2a_rest_{m}"} for m in ("get", "post", "delete")
    },
    "/v1/workspaces/{ref}/.well-known/agent-card.json": _CARD,
}
