"""The HTTP edge of the credentials, allow-list and deploy endpoints (issues 10 and 13): who
may call each (the admin token only), the body limit, malformed and mistyped bodies, unknown
refs and conflicts with their codes, the success bodies, and the OpenAPI document that
describes them. In process: berth's app over the service tests' in-memory world, so each
case costs milliseconds, not a `berth serve` (tests/security runs the same against one)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from berth.api.app import create_app
from berth.domain.errors import Unauthorized
from berth.domain.restart import Phase
from tests.e2e.harness import free_port
from tests.service.fakes import ADMIN, World, world
from tests.service.test_lifecycle import _finished, _until

LIMIT = 4096  # BERTH_MAX_BODY_BYTES of these tests
OPENMETRICS = "application/openmetrics-text"


@dataclass
class Edge:
    w: World
    http: httpx.AsyncClient  # the operator's: the admin token
    anon: httpx.AsyncClient  # no credential unless a test gives one
    secrets: dict[str, str]  # a real credential of each role: caller, agent, run


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    async with served() as e:
        yield e


@asynccontextmanager
async def served(**settings: Any) -> AsyncIterator[Edge]:
    """Workspace `a` (process, online, restart_mode stop-first) and `ext` (external)."""
    async with world(max_body_bytes=LIMIT, **settings) as w:
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


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def error(r: httpx.Response, status: int) -> dict[str, Any]:
    """The error body of a response that must have `status`."""
    assert r.status_code == status, (r.status_code, r.text)
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"code", "message"}, err
    return err


# every route of these endpoints, and whether it reads a body
ROUTES = [
    ("GET", "/v1/credentials", False),
    ("POST", "/v1/credentials", True),
    ("POST", "/v1/credentials/workspace:a/rotate", False),
    ("POST", "/v1/credentials/workspace:a/revoke", False),
    ("POST", "/v1/workspaces/a/allow", True),
    ("POST", "/v1/workspaces/a/deny", True),
    ("POST", "/v1/workspaces/a/deploy", True),
    ("POST", "/v1/workspaces/a/deploy/promote", False),
    ("POST", "/v1/workspaces/a/deploy/rollback", False),
]
ROUTE_IDS = [f"{m} {p}" for m, p, _ in ROUTES]
BODY = {
    "/v1/credentials": {"name": "ci"},
    "/v1/workspaces/a/allow": {"callers": ["*"]},
    "/v1/workspaces/a/deny": {"callers": ["ext"]},
    "/v1/workspaces/a/deploy": {"env": {"V": "2"}},
}


async def _unchanged(e: Edge) -> tuple[Any, ...]:
    """What a refused call must have left as it was."""
    ws = await e.w.c.roster.get("a")
    creds = sorted((c["subject"], c["status"], c["rotated_at"]) for c in await e.w.c.access.all())
    return ws.version, ws.allowed_callers, ws.env, creds, await e.w.store.list_restarts(ws.id, 9)


@pytest.mark.parametrize(("method", "path", "_reads"), ROUTES, ids=ROUTE_IDS)
async def test_only_the_admin_token_may_call(
    edge: Edge, method: str, path: str, _reads: bool
) -> None:
    """No credential: 401 with the Bearer challenge; an unknown token: 401 invalid_token; a
    caller (bwc_), agent (bwa_) or run (bwr_) credential: 403 forbidden. Nothing moves."""
    before = await _unchanged(edge)
    body = BODY.get(path)
    r = await edge.anon.request(method, path, json=body)
    assert error(r, 401)["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    r = await edge.anon.request(method, path, json=body, headers=bearer("not-a-token"))
    assert error(r, 401)["code"] == "invalid_token"
    for role, secret in edge.secrets.items():
        r = await edge.anon.request(method, path, json=body, headers=bearer(secret))
        assert error(r, 403)["code"] == "forbidden", role
    assert await _unchanged(edge) == before


@pytest.mark.parametrize(("method", "path", "reads"), ROUTES, ids=ROUTE_IDS)
async def test_a_body_over_the_limit_is_refused(
    edge: Edge, method: str, path: str, reads: bool
) -> None:
    """A declared Content-Length over the limit: 413 before the credential is looked at;
    a body without one (chunked) is cut off as it passes the limit, where it is read."""
    before = await _unchanged(edge)
    big = b'{"pad": "' + b"x" * LIMIT + b'"}'
    for client in (edge.http, edge.anon):
        r = await client.request(method, path, content=big)
        err = error(r, 413)
        assert err["code"] == "too_large" and str(LIMIT) in err["message"]

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * (LIMIT // 2)

    if reads:
        r = await edge.http.request(method, path, content=chunked())
        assert error(r, 413)["code"] == "too_large"
    assert await _unchanged(edge) == before


@pytest.mark.parametrize(
    "path", [p for _, p, reads in ROUTES if reads], ids=[p for _, p, r in ROUTES if r]
)
async def test_a_body_that_is_not_json_is_400(edge: Edge, path: str) -> None:
    before = await _unchanged(edge)
    for raw in (b"{oops", b'{"callers": [', b"\xff\xfe"):
        err = error(await edge.http.post(path, content=raw), 400)
        assert err["code"] == "invalid_json", raw
    assert await _unchanged(edge) == before


@pytest.mark.parametrize(
    ("path", "body", "word"),
    [
        ("/v1/credentials", {}, '{"name": "<caller name>"} or {"agent"'),
        ("/v1/credentials", None, '{"name": "<caller name>"} or {"agent"'),
        ("/v1/credentials", ["ci"], '{"name": "<caller name>"} or {"agent"'),
        ("/v1/credentials", {"name": "ci", "agent": "ext"}, '{"name": "<caller name>"}'),
        ("/v1/credentials", {"name": "ci", "role": "agent"}, '{"name": "<caller name>"}'),
        ("/v1/credentials", {"name": 5}, "name: 1-63"),
        ("/v1/credentials", {"name": "Not A Name"}, "name: 1-63"),
        ("/v1/credentials", {"agent": ["ext"]}, "agent: the name of an external workspace"),
        ("/v1/credentials", {"agent": "a"}, "workspace a is process"),
        ("/v1/workspaces/a/deploy", [], "the body must be a JSON object"),
        ("/v1/workspaces/a/deploy", {"colour": "red"}, "unknown field(s): colour"),
        ("/v1/workspaces/a/deploy", {"command": "agent"}, "command: a non-empty list"),
        ("/v1/workspaces/a/deploy", {"image": "x:1"}, "only a docker workspace's image"),
        ("/v1/workspaces/a/deploy", {"env": {"A": 1}}, "env: an object of string values"),
        ("/v1/workspaces/a/deploy", {"env": {"BERTH_URL": "x"}}, "BERTH_* variables"),
        ("/v1/workspaces/a/deploy", {"mode": "sideways"}, "mode: one of stop-first, replace"),
        ("/v1/workspaces/a/deploy", {"canary": "lots"}, "canary: the percent"),
        ("/v1/workspaces/a/deploy", {"canary": 100}, "canary: the percent"),
        ("/v1/workspaces/a/deploy", {"canary": True}, "canary: the percent"),
        ("/v1/workspaces/a/deploy", {"canary_seconds": 5}, "canary_seconds: only with canary"),
        ("/v1/workspaces/a/deploy", {"drain_seconds": "5"}, "drain_seconds: a number"),
        ("/v1/workspaces/a/deploy", {"reason": 5}, "reason: a string"),
        ("/v1/workspaces/a/deploy/sideways", None, "decision"),
    ],
)
async def test_a_wrong_shape_or_type_is_422_naming_the_field(
    edge: Edge, path: str, body: Any, word: str
) -> None:
    before = await _unchanged(edge)
    r = await edge.http.post(path, json=body)
    err = error(r, 422)
    assert err["code"] == "invalid_input" and word in err["message"], err
    assert await _unchanged(edge) == before


async def test_unknown_refs_are_404_and_states_that_forbid_it_409(edge: Edge) -> None:
    cases = [
        ("/v1/credentials/ghost/rotate", None, 404, "credential_not_found"),
        ("/v1/credentials/ghost/revoke", None, 404, "credential_not_found"),
        ("/v1/credentials", {"agent": "ghost"}, 404, "workspace_not_found"),
        ("/v1/workspaces/ghost/allow", {"callers": ["a"]}, 404, "workspace_not_found"),
        ("/v1/workspaces/ghost/deny", {"callers": ["a"]}, 404, "workspace_not_found"),
        ("/v1/workspaces/ghost/deploy", {}, 404, "workspace_not_found"),
        ("/v1/workspaces/ghost/deploy/promote", None, 404, "workspace_not_found"),
        ("/v1/credentials", {"name": "ext"}, 201, None),
        ("/v1/credentials", {"name": "ext"}, 409, "credential_exists"),
        ("/v1/credentials", {"agent": "ext"}, 409, "credential_exists"),  # made at create
        ("/v1/credentials/caller:ext/revoke", None, 200, None),
        ("/v1/credentials/caller:ext/rotate", None, 409, "credential_revoked"),
        ("/v1/workspaces/a/deploy/promote", None, 409, "no_canary"),
        ("/v1/workspaces/a/deploy/rollback", None, 409, "no_canary"),
        ("/v1/workspaces/a/deploy", {"mode": "replace"}, 409, "restart_mode_stop_first"),
        ("/v1/workspaces/a/deploy", {"canary": 10}, 409, "restart_mode_stop_first"),
        ("/v1/workspaces/ext/deploy", {"mode": "replace"}, 409, "replace_unsupported"),
    ]
    for path, body, status, code in cases:
        r = await edge.http.post(path, json=body)
        if code is None:
            assert r.status_code == status, (path, r.text)
        else:
            assert error(r, status)["code"] == code, (path, r.text)
    ws = await edge.w.c.roster.get("a")
    assert ws.version == 1 and ws.peer is None


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


async def test_credentials_issued_listed_rotated_and_revoked(edge: Edge) -> None:
    made = await edge.http.post("/v1/credentials", json={"name": "ci", "agent": None})
    assert made.status_code == 201, made.text
    ci = made.json()
    assert (ci["subject"], ci["role"], ci["status"], ci["workspace_id"]) == (
        "caller:ci",
        "caller",
        "active",
        None,
    )
    assert ci["secret"].startswith("bwc_")
    listed = await edge.http.get("/v1/credentials")
    assert listed.status_code == 200
    rows = {c["subject"]: c for c in listed.json()["credentials"]}
    assert {"caller:ci", "workspace:a", "workspace:ext", "agent:ext"} <= set(rows)
    assert "secret" not in listed.text and ci["secret"] not in listed.text
    assert rows["caller:ci"] == {k: v for k, v in ci.items() if k != "secret"}

    rotated = await edge.http.post(f"/v1/credentials/{ci['id']}/rotate")  # by id
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["secret"].startswith("bwc_") and new["secret"] != ci["secret"]
    assert new["rotated_at"] is not None and new["id"] == ci["id"]
    with pytest.raises(Unauthorized):
        await edge.w.c.access.caller(ci["secret"])  # the old secret stops at once
    assert (await edge.w.c.access.caller(new["secret"])).subject == "caller:ci"

    for _ in range(2):  # revoked for good; revoking again answers the same
        revoked = await edge.http.post("/v1/credentials/caller:ci/revoke")  # by subject
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["status"] == "revoked" and "secret" not in revoked.json()
    with pytest.raises(Unauthorized):
        await edge.w.c.access.caller(new["secret"])

    # an external workspace's agent credential, when it has none (a database from before)
    ext = await edge.w.c.roster.get("ext")
    await edge.w.store.delete_credentials(ext.id)
    agent = await edge.http.post("/v1/credentials", json={"agent": "ext"})
    assert agent.status_code == 201, agent.text
    got = agent.json()
    assert (got["subject"], got["role"], got["workspace_id"]) == ("agent:ext", "agent", ext.id)
    assert got["secret"].startswith("bwa_")
    assert (await edge.w.c.access.agent(got["secret"])).id == ext.id


async def test_allow_and_deny_answer_the_allow_list(edge: Edge) -> None:
    r = await edge.http.post(
        "/v1/workspaces/a/allow", json={"callers": ["ext", "caller:ci", "*", "operator", "ext"]}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "workspace": "a",
        "allowed_callers": ["workspace:ext", "caller:ci", "*"],  # stored form, once each
    }
    r = await edge.http.post("/v1/workspaces/a/deny", json={"callers": ["workspace:ext", "*"]})
    assert r.status_code == 200 and r.json()["allowed_callers"] == ["caller:ci"]
    assert (await edge.w.c.roster.get("a")).allowed_callers == ["caller:ci"]
    r = await edge.http.post("/v1/workspaces/a/deny", json={"callers": []})  # nothing to drop
    assert r.status_code == 200 and r.json()["allowed_callers"] == ["caller:ci"]


async def test_deploys_and_a_canary_decided_by_hand(edge: Edge) -> None:
    w = edge.w
    a = await w.c.roster.get("a")
    r = await edge.http.post(
        "/v1/workspaces/a/deploy", json={"env": {"V": "2"}, "restart_mode": "replace"}
    )
    assert r.status_code == 202, r.text
    rec = r.json()
    assert (rec["trigger"], rec["mode"], rec["joined"]) == ("deploy", "stop-first", False)
    assert (await _finished(w, a.id, rec["id"])).phase is Phase.DONE
    now = await w.c.roster.get("a")
    assert (now.version, now.env, now.restart_mode.value) == (2, {"V": "2"}, "replace")
    r = await edge.http.post("/v1/workspaces/a/deploy", content=b"")  # the same spec again
    assert r.status_code == 202, r.text
    again = await _finished(w, a.id, r.json()["id"])
    assert (again.phase, again.mode, again.versions) == (
        Phase.DONE,
        "replace",
        {"from": 2, "to": 3},
    )

    for decision, phase, version in (
        ("promote", Phase.DONE, 4),
        ("rollback", Phase.ROLLED_BACK, 4),
    ):
        r = await edge.http.post(
            "/v1/workspaces/a/deploy", json={"canary": 25, "canary_seconds": 60}
        )
        assert r.status_code == 202, r.text
        await _until(lambda: (p := w.c.roster.peek(a.id).peer) is not None and p.canary == 25)
        decided = await edge.http.post(f"/v1/workspaces/a/deploy/{decision}")
        assert decided.status_code == 202, decided.text
        assert decided.json()["id"] == r.json()["id"]  # the canary's own record
        done = await _finished(w, a.id, r.json()["id"])
        assert done.phase is phase, done.error
        assert done.versions is not None and done.versions["decision"]["result"] == decision
        assert (await w.c.roster.get("a")).version == version


async def test_metrics_on_berths_port_with_a_token() -> None:
    async with served(metrics_token="scrape-me") as e:
        r = await e.anon.get("/metrics")
        assert error(r, 401)["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        for wrong in ("nope", e.secrets["caller"], e.secrets["agent"]):
            r = await e.anon.get("/metrics", headers=bearer(wrong))
            assert error(r, 401)["code"] == "invalid_token"
        for token in ("scrape-me", ADMIN):
            r = await e.anon.get("/metrics", headers=bearer(token))
            assert r.status_code == 200 and 'berth_queue_depth{workspace="a"}' in r.text
            assert r.headers["content-type"].startswith("text/plain")
        r = await e.anon.get("/metrics", headers=bearer("scrape-me") | {"accept": OPENMETRICS})
        assert r.headers["content-type"].startswith(OPENMETRICS) and r.text.endswith("# EOF\n")
        r = await e.anon.get("/v1/credentials", headers=bearer("scrape-me"))
        assert error(r, 401)["code"] == "invalid_token"  # the metrics token is for /metrics
        for client in (e.anon, e.http):
            r = await client.request("GET", "/metrics", content=b"x" * (LIMIT + 1))
            assert error(r, 413)["code"] == "too_large"


async def test_metrics_open_without_a_token_and_gone_from_berths_port_with_an_address() -> None:
    async with served() as e:
        r = await e.anon.get("/metrics", headers=bearer("anything"))
        assert r.status_code == 200 and "berth_queue_depth" in r.text
        assert "/metrics" not in (await e.anon.get("/openapi.json")).json()["paths"]
    async with served(metrics_address=f"127.0.0.1:{free_port()}", metrics_token="t") as e:
        for client in (e.anon, e.http):
            assert error(await client.get("/metrics"), 404)["code"] == "not_found"
    with pytest.raises(ValueError, match="BERTH_METRICS_ADDRESS"):
        async with served(metrics_address="9464"):
            pass


async def test_the_openapi_document_open_for_the_operator_only_or_off() -> None:
    async with served(openapi="admin") as e:
        r = await e.anon.get("/openapi.json")
        assert error(r, 401)["code"] == "unauthorized"
        for secret in e.secrets.values():
            r = await e.anon.get("/openapi.json", headers=bearer(secret))
            assert error(r, 403)["code"] == "forbidden"
        r = await e.http.get("/openapi.json")
        assert r.status_code == 200 and "/v1/credentials" in r.json()["paths"]
    async with served(openapi="off") as e:
        for client in (e.anon, e.http):
            assert error(await client.get("/openapi.json"), 404)["code"] == "not_found"
            assert (await client.get("/docs")).status_code == 404  # always off (a CDN's)
    with pytest.raises(ValueError, match="BERTH_OPENAPI"):
        async with served(openapi="public"):
            pass


async def test_heartbeats_are_answered_ahead_of_fastapi_with_the_same_edge(
    edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """api/fast.py serves heartbeats without FastAPI's middleware: its answers are the
    edge's all the same (who may beat, the body limit, malformed and mistyped bodies;
    the FastAPI route gives the same answers to this test)."""
    from berth.api import fast

    served_fast: list[str] = []
    real = fast._heartbeat

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        served_fast.append(scope["path"])
        await real(scope, receive, send)

    monkeypatch.setattr(fast, "_heartbeat", counted)
    path = "/v1/agents/heartbeat"
    r = await edge.anon.post(path, json={"active_tasks": 0})
    assert error(r, 401)["code"] == "unauthorized" and r.headers["www-authenticate"]
    assert error(await edge.anon.post(path, headers=bearer("bwa_nope"), json={}), 401)
    for role in ("caller",):  # a caller credential cannot speak for an agent
        got = error(await edge.anon.post(path, headers=bearer(edge.secrets[role]), json={}), 403)
        assert got["code"] == "wrong_role"
    agent = bearer(edge.secrets["agent"])
    assert error(await edge.anon.post(path, headers=agent, content=b"{nope"), 400)
    big = b'{"active_tasks": 0, "pad": "' + b"x" * LIMIT + b'"}'
    assert error(await edge.anon.post(path, headers=agent, content=big), 413)
    assert error(await edge.anon.post(path, headers=agent, json={"active_tasks": "x"}), 422)
    await edge.anon.post("/v1/agents/register", headers=agent, json={"url": "http://127.0.0.1:9/"})
    ok = await edge.anon.post(path, headers=agent, json={"active_tasks": 0})
    assert ok.status_code == 200 and ok.headers["content-type"] == "application/json"
    assert ok.json()["ok"] is True and ok.json()["heartbeat_seconds"] > 0
    assert len(served_fast) == 6  # every beat but the one over the limit (refused before)
