"""The HTTP edge of the credentials, allow-list and deploy endpoints (issues 10 and 13): who
may call each (the admin token only), the body limit, malformed and mistyped bodies, unknown
refs and conflicts with their codes, the success bodies, and the OpenAPI document that
describes them. In process: berth's app over the service tests' in-memory world, so each
case costs milliseconds, not a `berth serve` (tests/security runs the same against one)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from berth.api.app import create_app
from tests.service.fakes import ADMIN, World, world

LIMIT = 4096  # BERTH_MAX_BODY_BYTES of these tests


@dataclass
class Edge:
    w: World
    http: httpx.AsyncClient  # the operator's: the admin token
    anon: httpx.AsyncClient  # no credential unless a test gives one
    secrets: dict[str, str]  # a real credential of each role: caller, agent, run


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    """Workspace `a` (process, online, restart_mode stop-first) and `ext` (external)."""
    async with world(max_body_bytes=LIMIT) as w:
        a = await w.create("a")
        _, ext = await w.c.workspaces.create({"name": "ext", "runtime": "external"})
        secrets = {"caller": ext["token"], "agent": ext["agent_token"], "run": w.agent(a).token}
        transport = httpx.ASGITransport(create_app(container=w.c))
        admin = {"authorization": f"Bearer {ADMIN}"}
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://berth", headers=admin) as http,
            httpx.AsyncClient(transport=transport, base_url="http://berth") as anon,
        ):
            yield Edge(w, http, anon, secrets)


def error(r: httpx.Response, status: int) -> dict[str, Any]:
    """The error body of a response that must have `status`."""
    assert r.status_code == status, (r.status_code, r.text)
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"code", "message"}, err
    return err


@pytest.mark.parametrize("action", ["allow", "deny"])
@pytest.mark.parametrize(
    ("body", "word"),
    [
        ({"callers": ["ext"], "colour": "red"}, "unknown field(s): colour"),
        ({"caller": ["ext"]}, "unknown field(s): caller"),
        (["ext"], '{"callers": [...]}'),
        ("ext", '{"callers": [...]}'),
        ({}, "callers: a list of strings"),
        ({"callers": "ext"}, "callers: a list of strings"),
        ({"callers": [1]}, "callers: a list of strings"),
        ({"callers": ["Not A Name"]}, "name: 1-63"),
        ({"callers": ["caller:"]}, "name: 1-63"),
    ],
)
async def test_allow_and_deny_refuse_what_their_schema_does_not_describe(
    edge: Edge, action: str, body: Any, word: str
) -> None:
    """{"callers": [...]} and nothing else: an extra field, or a bare list, used to be
    ignored or taken (the documented schema is an object with no other property)."""
    r = await edge.http.post(f"/v1/workspaces/a/{action}", json=body)
    err = error(r, 422)
    assert err["code"] == "invalid_input" and word in err["message"], err
    assert (await edge.w.c.roster.get("a")).allowed_callers == []


DEPLOY = {"command", "image", "env", "restart_mode", "mode", "drain_seconds", "reason"}
# (method, path) -> its request body (required?, the properties; None: it takes none) and
# its success (status, schema)
OPERATIONS: dict[tuple[str, str], tuple[tuple[bool, set[str]] | None, tuple[str, str]]] = {
    ("get", "/v1/credentials"): (None, ("200", "CredentialList")),
    ("post", "/v1/credentials"): ((True, {"name", "agent"}), ("201", "Credential")),
    ("post", "/v1/credentials/{ref}/rotate"): (None, ("200", "Credential")),
    ("post", "/v1/credentials/{ref}/revoke"): (None, ("200", "Credential")),
    ("post", "/v1/workspaces/{ref}/allow"): ((True, {"callers"}), ("200", "AllowList")),
    ("post", "/v1/workspaces/{ref}/deny"): ((True, {"callers"}), ("200", "AllowList")),
    ("post", "/v1/workspaces/{ref}/restart"): (
        (False, {"drain_seconds", "reason", "mode"}),
        ("202", "Restart"),
    ),
    ("post", "/v1/workspaces/{ref}/deploy"): (
        (False, DEPLOY | {"canary", "canary_seconds"}),
        ("202", "Restart"),
    ),
    ("post", "/v1/workspaces/{ref}/deploy/{decision}"): (None, ("202", "Restart")),
}


async def test_the_openapi_document_describes_each_operation(edge: Edge) -> None:
    """The operator's token, the body as the route reads it (empty: {} where it is not
    required), the typed success, berth's error body for each refusal the route makes,
    and the decision's two values."""
    doc = (await edge.anon.get("/openapi.json")).json()
    for (method, path), (body, (status, schema)) in OPERATIONS.items():
        op = doc["paths"][path][method]
        assert op["security"] == [{"admin": []}], (method, path)
        if body is None:
            assert "requestBody" not in op, (method, path)
        else:
            required, properties = body
            got = op["requestBody"]
            assert got["required"] is required, (method, path)
            shown = got["content"]["application/json"]["schema"]
            assert set(shown["properties"]) == properties, (method, path)
            assert shown["additionalProperties"] is False, (method, path)
        ok = op["responses"][status]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{schema}"}, (method, path)
        assert schema in doc["components"]["schemas"]
        refusals = {"401", "403", "413", "422", "503"} | ({"400"} if method == "post" else set())
        assert refusals <= set(op["responses"]), (method, path, sorted(op["responses"]))
        for s in refusals:
            assert op["responses"][s]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"
            }
    decision = doc["paths"]["/v1/workspaces/{ref}/deploy/{decision}"]["post"]["parameters"]
    assert {"promote", "rollback"} == set(
        next(p for p in decision if p["name"] == "decision")["schema"]["enum"]
    )
    for path, statuses in (
        ("/v1/credentials", {"404", "409"}),  # {"agent": W}; the subject exists
        ("/v1/credentials/{ref}/rotate", {"404", "409"}),  # revoked
        ("/v1/workspaces/{ref}/allow", {"404"}),
        ("/v1/workspaces/{ref}/deploy", {"404", "409"}),
        ("/v1/workspaces/{ref}/deploy/{decision}", {"404", "409"}),  # no canary
    ):
        assert statuses <= set(doc["paths"][path]["post"]["responses"]), path
