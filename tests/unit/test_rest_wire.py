"""The HTTP+JSON binding's wire rules (issue 11): terminal events without a JSON-RPC
envelope, which deliveries stream, error bodies, and what an agent's answer means."""

from __future__ import annotations

import json

from berth.domain.delivery import Outcome
from berth.ports import AgentReply
from berth.services.replies import classify_rest
from berth.wire import is_stream, is_terminal_event, rest_error, rest_method, rest_path


def ev(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def test_bare_stream_responses_end_a_stream_like_enveloped_ones() -> None:
    working = {"statusUpdate": {"status": {"state": "TASK_STATE_WORKING"}}}
    done = {"statusUpdate": {"status": {"state": "TASK_STATE_COMPLETED"}}}
    assert not is_terminal_event(ev(working))
    assert is_terminal_event(ev(done))
    assert is_terminal_event(ev({"message": {"parts": []}}))
    assert not is_terminal_event(ev({"task": {"status": {"state": "TASK_STATE_SUBMITTED"}}}))
    assert is_terminal_event(ev({"task": {"status": {"state": "TASK_STATE_INPUT_REQUIRED"}}}))
    assert not is_terminal_event(ev({"artifactUpdate": {"artifact": {}}}))
    assert is_terminal_event(ev({"error": {"code": 404}}))
    # the JSON-RPC shapes still read the same
    assert not is_terminal_event(ev({"jsonrpc": "2.0", "id": 1, "result": working}))
    assert is_terminal_event(ev({"jsonrpc": "2.0", "id": 1, "result": done}))


def test_which_deliveries_stream() -> None:
    assert is_stream("SendStreamingMessage") and is_stream("message/stream")
    assert is_stream(rest_method("/message:stream"))
    assert is_stream(rest_method("/tenant-a/message:stream"))
    assert not is_stream(rest_method("/message:send")) and not is_stream("SendMessage")
    assert rest_path(rest_method("/t/message:send")) == "/t/message:send"
    assert rest_path("SendMessage") is None


def test_rest_error_body() -> None:
    doc = json.loads(rest_error(404, "no such workspace", "WORKSPACE_NOT_FOUND", {"n": 1}))
    err = doc["error"]
    assert (err["code"], err["status"], err["message"]) == (404, "NOT_FOUND", "no such workspace")
    assert err["details"][0]["reason"] == "WORKSPACE_NOT_FOUND"
    assert err["details"][0]["metadata"] == {"n": "1"}  # ErrorInfo metadata values are strings


def test_classify_rest_answers() -> None:
    def c(status: int, body: bytes) -> Outcome:
        return classify_rest(AgentReply(status, body))

    assert c(200, b'{"task": {}}') is Outcome.REPLIED
    assert c(204, b"") is Outcome.REPLIED
    assert c(404, rest_error(404, "x", "TASK_NOT_FOUND")) is Outcome.REPLIED
    assert c(500, rest_error(500, "boom", "INTERNAL")) is Outcome.REPLIED  # the agent's answer
    draining = {
        "error": {"code": 500, "details": [{"reason": "x", "metadata": {"reason": "DRAINING"}}]}
    }
    assert c(500, ev(draining)) is Outcome.DRAINING
    assert c(502, b"<html>bad gateway</html>") is Outcome.TRANSPORT
    assert c(429, b"slow down") is Outcome.TRANSPORT
    assert c(404, b"not found") is Outcome.REJECTED


def test_a_rest_send_names_its_message_either_way() -> None:
    import pytest

    from berth.domain.errors import RpcInvalid
    from berth.services.rest import _message_id

    assert _message_id(b'{"message": {"messageId": "a"}}') == (
        "a",
        b'{"message": {"messageId": "a"}}',
    )
    assert _message_id(b'{"request": {"message_id": "b"}}')[0] == "b"  # v0.3 proto names
    mid, raw = _message_id(b'{"request": {"message_id": ""}}')
    assert len(mid) == 36 and json.loads(raw) == {"request": {"message_id": mid}}
    mid, raw = _message_id(b'{"message": {"parts": []}}')
    assert json.loads(raw)["message"]["messageId"] == mid
    for bad in (b"{no", b'{"nothing": 1}', b'{"message": {"messageId": 5}}', b"[]"):
        with pytest.raises(RpcInvalid):
            _message_id(bad)
