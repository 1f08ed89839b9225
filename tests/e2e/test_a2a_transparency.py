"""Issue 11: A2A through berth is the agent's A2A. Each check sends the same request to a
stock a2a-sdk agent (berth.examples.stock_echo, not on berth's SDK) directly and through
berth, on JSON-RPC and on HTTP+JSON, and asserts the same observable outcome: HTTP status,
media type, error code, event sequence. The checks are written from the A2A 1.0
specification's method list and the HTTP+JSON binding's routes.

The agent is an `external` workspace created with only its URL: it neither registers nor
heartbeats, so berth finds it (and watches it) by probing its card.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import ADMIN, LANE_ENV, PYTHON_ENV, BerthServer, require_lane
from tests.e2e.stock import Ends, StockAgent, kinds, media, message

pytestmark = pytest.mark.slow
ENDS = ("direct", "berth")


def _wait_online(c: httpx.Client, ref: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = c.get(f"/v1/workspaces/{ref}").json()
        if last.get("status") == "online":
            return last
        time.sleep(0.1)
    raise AssertionError(f"{ref} not online: {last}")


@pytest.fixture(scope="module", params=["python", "lane"])
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BerthServer, Ends]]:
    """Every check twice: on berth alone, and with its fast lane in front (docs/fast-lane.md)."""
    tmp: Path = tmp_path_factory.mktemp("transparency")
    agent = StockAgent(tmp).start()
    lane = request.param == "lane"
    server = BerthServer(tmp / "berth", env=LANE_ENV if lane else PYTHON_ENV).start()
    try:
        if lane:
            require_lane(server)
        with httpx.Client(
            base_url=server.url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=60
        ) as c:
            for name, card in (("stock", "callers"), ("stock-public", "public")):
                r = c.post(
                    "/v1/workspaces",
                    json={"name": name, "runtime": "external", "url": agent.url, "card": card},
                )
                assert r.status_code == 201, r.text
            ws = _wait_online(c, "stock")
            assert ws["capabilities"] == {"probed": True}
            _wait_online(c, "stock-public")
        ends = Ends(agent.url, server.url, "stock")
        yield server, ends
        ends.close()
    finally:
        server.stop()
        agent.stop()


# the card ------------------------------------------------------------------------------
def test_card_interfaces_point_at_berth_per_binding_and_grpc_is_removed(world):
    server, e = world
    direct = e.http.get(e.card["direct"]).json()
    served = e.http.get(e.card["berth"], headers=e.auth("berth")).json()
    assert {i["protocolBinding"] for i in direct["supportedInterfaces"]} == {
        "JSONRPC",
        "HTTP+JSON",
        "GRPC",
    }
    assert {(i["protocolBinding"], i["url"]) for i in served["supportedInterfaces"]} == {
        ("JSONRPC", e.jsonrpc["berth"]),
        ("HTTP+JSON", e.rest["berth"]),
    }
    assert served["securitySchemes"] == {
        "berth": {
            "httpAuthSecurityScheme": {
                "scheme": "Bearer",
                "description": "berth's admin token or a caller credential the workspace allows",
            }
        }
    }
    assert served["securityRequirements"] == [{"schemes": {"berth": {"list": []}}}]
    for key in ("name", "description", "version", "capabilities", "skills"):
        assert served[key] == direct[key]


def test_card_caching_headers_and_304_as_the_agent_does(world):
    _, e = world
    for end in ENDS:
        r = e.http.get(e.card[end], headers=e.auth(end))
        assert r.status_code == 200 and r.headers["cache-control"] == "public, max-age=60", end
        etag = r.headers["etag"]
        again = e.http.get(e.card[end], headers={**e.auth(end), "if-none-match": etag})
        assert again.status_code == 304 and again.content == b"", end
        assert again.headers["etag"] == etag
        other = e.http.get(e.card[end], headers={**e.auth(end), "if-none-match": '"other"'})
        assert other.status_code == 200, end


def test_card_needs_a_token_with_a_bearer_challenge_unless_public(world):
    server, e = world
    r = httpx.get(e.card["berth"])
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = httpx.get(f"{server.url}/v1/workspaces/stock-public/.well-known/agent-card.json")
    assert r.status_code == 200 and r.json()["name"] == "stock-echo"
    r = httpx.get(e.card["berth"], headers={"authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    # an unknown workspace: 401 without a token (names are not probed for free), else 404
    nobody = f"{server.url}/v1/workspaces/nobody/.well-known/agent-card.json"
    assert httpx.get(nobody).status_code == 401
    assert httpx.get(nobody, headers=e.auth("berth")).status_code == 404


# sends --------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["hello", "task hello"], ids=["message", "task"])
def test_send_over_both_bindings(world, text):
    _, e = world
    seen = {}
    for end in ENDS:
        r = e.rpc(end, "SendMessage", message(text))
        doc = r.json()
        rest = e.rest_call(end, "POST", "/message:send", json=message(text))
        seen[end] = (
            r.status_code,
            media(r.headers["content-type"]),
            sorted(doc["result"]),
            rest.status_code,
            media(rest.headers["content-type"]),
            sorted(rest.json()),
        )
    assert seen["berth"] == seen["direct"], seen
    assert seen["berth"][4] == "application/a2a+json"


def test_rest_send_is_idempotent_by_message_id_through_berth(world):
    _, e = world
    body = message("task once", mid="rest-idem-1")
    first = e.rest_call("berth", "POST", "/message:send", json=body)
    again = e.rest_call("berth", "POST", "/message:send", json=body)
    assert first.status_code == again.status_code == 200
    assert again.headers["x-berth-replayed"] == "true"
    assert first.json()["task"]["id"] == again.json()["task"]["id"]
    assert media(again.headers["content-type"]) == "application/a2a+json"


def test_streams_have_the_same_event_sequence(world):
    _, e = world
    seen = {}
    for end in ENDS:
        rpc = e.stream(
            end,
            e.jsonrpc[end],
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "SendStreamingMessage",
                "params": message("task s"),
            },
        )
        rest = e.stream(end, e.rest[end] + "/message:stream", message("task s"))
        seen[end] = (rpc[0], media(rpc[1]), kinds(rpc[2]), rest[0], media(rest[1]), kinds(rest[2]))
    assert seen["berth"] == seen["direct"], seen
    assert seen["direct"][2] == ["task", "statusUpdate", "artifactUpdate", "statusUpdate"]


def test_up_front_stream_errors_stay_plain_errors(world):
    """A stream the agent refuses at once (an unknown task) is that error, not SSE:
    SendStreamingMessage goes through the delivery log, SubscribeToTask passes through."""
    _, e = world
    seen = {}
    for end in ENDS:
        send = e.stream(
            end,
            e.jsonrpc[end],
            {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "SendStreamingMessage",
                "params": message("task x", task_id="no-such-task"),
            },
        )
        sub = e.stream(
            end,
            e.jsonrpc[end],
            {"jsonrpc": "2.0", "id": 8, "method": "SubscribeToTask", "params": {"id": "nope"}},
        )
        rest_send = e.stream(
            end, e.rest[end] + "/message:stream", message("task x", task_id="no-such-task")
        )
        rest_sub = e.stream(end, e.rest[end] + "/tasks/nope:subscribe")
        seen[end] = [
            (s[0], media(s[1]), s[2], _code(s[3])) for s in (send, sub, rest_send, rest_sub)
        ]
    assert seen["berth"] == seen["direct"], seen
    assert seen["direct"][0] == (200, "application/json", [], -32001)
    assert seen["direct"][3][0] == 404


def _code(body: bytes) -> Any:
    import json

    doc = json.loads(body) if body else {}
    err = doc.get("error") or {}
    return err.get("code")


# tasks --------------------------------------------------------------------------------
def _task(e: Ends, end: str, text: str = "task t") -> dict[str, Any]:
    return e.rest_call(end, "POST", "/message:send", json=message(text)).json()["task"]


def test_get_task_with_history_length_and_list_tasks(world):
    _, e = world
    seen = {}
    # both tasks first: each end's list then sees the same agent (the lists are the agent's,
    # and whether a test before this one made tasks depends on the order tests run in)
    tasks = {end: _task(e, end) for end in ENDS}
    for end in ENDS:
        task = tasks[end]
        got = e.rpc(end, "GetTask", {"id": task["id"], "historyLength": 0}).json()["result"]
        rest = e.rest_call(end, "GET", f"/tasks/{task['id']}?historyLength=1")
        listed = e.rest_call(end, "GET", "/tasks?pageSize=2")
        rpc_list = e.rpc(end, "ListTasks", {"pageSize": 2}).json()
        seen[end] = (
            "history" in got,
            rest.status_code,
            media(rest.headers["content-type"]),
            len(rest.json().get("history", [])),
            listed.status_code,
            len(listed.json()["tasks"]),
            len(rpc_list["result"]["tasks"]),
        )
    assert seen["berth"] == seen["direct"], seen


def test_cancel_and_subscribe_live_and_terminal(world):
    _, e = world
    seen = {}
    for end in ENDS:
        r = e.rest_call(
            end,
            "POST",
            "/message:send",
            json={**message("task wait"), "configuration": {"returnImmediately": True}},
        )
        task_id = r.json()["task"]["id"]
        import threading

        def cancel_soon(end: str = end, task_id: str = task_id) -> None:
            time.sleep(1.0)
            e.rest_call(end, "POST", f"/tasks/{task_id}:cancel")

        t = threading.Thread(target=cancel_soon)
        t.start()
        live = e.stream(end, e.rest[end] + f"/tasks/{task_id}:subscribe")
        t.join()
        terminal = e.stream(end, e.rest[end] + f"/tasks/{task_id}:subscribe")
        rpc_terminal = e.stream(
            end,
            e.jsonrpc[end],
            {"jsonrpc": "2.0", "id": 3, "method": "SubscribeToTask", "params": {"id": task_id}},
        )
        again = e.rest_call(end, "POST", f"/tasks/{task_id}:cancel")
        seen[end] = (
            live[0],
            media(live[1]),
            kinds(live[2])[-1:],
            terminal[0],
            media(terminal[1]),
            rpc_terminal[0],
            media(rpc_terminal[1]),
            _code(rpc_terminal[3]),
            again.status_code,
        )
    assert seen["berth"] == seen["direct"], seen
    assert seen["direct"][2] == ["statusUpdate"]


def test_multi_turn_by_task_id_to_a_finished_task(world):
    _, e = world
    seen = {}
    for end in ENDS:
        task = _task(e, end)
        r = e.rest_call(end, "POST", "/message:send", json=message("more", task_id=task["id"]))
        rpc = e.rpc(end, "SendMessage", message("more", task_id=task["id"])).json()
        seen[end] = (
            r.status_code,
            media(r.headers["content-type"]),
            _code(r.content),
            "error" in rpc,
        )
    assert seen["berth"] == seen["direct"], seen


def test_push_notification_config_crud(world):
    _, e = world
    seen = {}
    for end in ENDS:
        task = _task(e, end)
        base = f"/tasks/{task['id']}/pushNotificationConfigs"
        cfg = {"url": "http://127.0.0.1:9/hook", "id": "c1"}
        made = e.rest_call(end, "POST", base, json={"taskId": task["id"], **cfg})
        got = e.rest_call(end, "GET", f"{base}/c1")
        listed = e.rest_call(end, "GET", base)
        gone = e.rest_call(end, "DELETE", f"{base}/c1")
        after = e.rest_call(end, "GET", f"{base}/c1")
        rpc = e.rpc(end, "ListTaskPushNotificationConfigs", {"taskId": task["id"]}).json()
        seen[end] = (
            made.status_code,
            got.status_code,
            listed.status_code,
            gone.status_code,
            after.status_code,
            sorted(rpc.get("result", rpc.get("error", {}))),
        )
    assert seen["berth"] == seen["direct"], seen


def test_malformed_requests_and_wrong_media_type(world):
    _, e = world
    seen = {}
    for end in ENDS:
        bad_json = e.rest_call(end, "POST", "/message:send", content=b"{nope")
        no_message = e.rest_call(end, "POST", "/message:send", json={"nothing": 1})
        rpc_bad = e.http.post(e.jsonrpc[end], content=b"{nope", headers=e.auth(end))
        text_type = e.rest_call(
            end,
            "POST",
            "/message:send",
            content=b'{"message": {"role": "ROLE_USER", "messageId": "%s", "parts": [{"text": "x"}]}}'
            % str(time.monotonic()).encode(),
            headers={"content-type": "text/plain"},
        )
        seen[end] = (
            bad_json.status_code,
            no_message.status_code,
            rpc_bad.json()["error"]["code"],
            text_type.status_code,
        )
    assert seen["berth"] == seen["direct"], seen


def test_jsonrpc_subscribe_live_and_cancel(world):
    import threading

    _, e = world
    seen = {}
    for end in ENDS:
        params = {**message("task wait"), "configuration": {"returnImmediately": True}}
        task_id = e.rpc(end, "SendMessage", params).json()["result"]["task"]["id"]

        def cancel_soon(end: str = end, task_id: str = task_id) -> None:
            time.sleep(1.0)
            e.rpc(end, "CancelTask", {"id": task_id})

        t = threading.Thread(target=cancel_soon)
        t.start()
        live = e.stream(
            end,
            e.jsonrpc[end],
            {"jsonrpc": "2.0", "id": 4, "method": "SubscribeToTask", "params": {"id": task_id}},
        )
        t.join()
        unknown = e.rpc(end, "CancelTask", {"id": "no-such-task"}).json()
        final = live[2][-1]["result"]
        state = (final.get("statusUpdate") or final.get("task"))["status"]["state"]
        seen[end] = (live[0], media(live[1]), state, unknown["error"]["code"])
    assert seen["berth"] == seen["direct"], seen
    assert seen["direct"][2] == "TASK_STATE_CANCELED"


async def test_an_agent_without_http_json_has_no_rest_routes_through_berth(berth_server):
    from tests.e2e.harness import create

    async with berth_server.client() as c:
        await create(c, "rpc-only")  # berth's SDK echo: JSON-RPC only
        card = (await c.get("/v1/workspaces/rpc-only/.well-known/agent-card.json")).json()
        assert {i["protocolBinding"] for i in card["supportedInterfaces"]} == {"JSONRPC"}
        base = "/v1/workspaces/rpc-only/a2a/rest"
        r = await c.post(f"{base}/message:send", json=message("hi"), headers={"a2a-version": "1.0"})
        assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
        assert r.json()["error"]["details"][0]["reason"] == "NO_REST_INTERFACE"
        assert (await c.get(f"{base}/tasks/x")).status_code == 404
        assert (await c.get("/v1/workspaces/rpc-only/deliveries")).json()["deliveries"] == []
