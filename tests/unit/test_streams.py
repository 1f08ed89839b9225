import json

import pytest

from berth.services.streams import sse
from berth.wire import is_terminal_event


def ev(result=None, error=None) -> bytes:
    doc = {"jsonrpc": "2.0", "id": 1}
    if error is not None:
        doc["error"] = error
    else:
        doc["result"] = result
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "data",
    [
        ev({"message": {"parts": []}}),
        ev({"task": {"id": "t", "status": {"state": "TASK_STATE_COMPLETED"}}}),
        ev({"statusUpdate": {"taskId": "t", "status": {"state": "TASK_STATE_FAILED"}}}),
        ev({"statusUpdate": {"taskId": "t", "status": {"state": "TASK_STATE_INPUT_REQUIRED"}}}),
        ev({"kind": "message", "parts": []}),
        ev({"kind": "status-update", "final": True, "status": {"state": "working"}}),
        ev({"kind": "task", "status": {"state": "completed"}}),
        ev(error={"code": -32603, "message": "x"}),
    ],
)
def test_terminal(data):
    assert is_terminal_event(data)


@pytest.mark.parametrize(
    "data",
    [
        ev({"task": {"id": "t", "status": {"state": "TASK_STATE_WORKING"}}}),
        ev({"statusUpdate": {"status": {"state": "TASK_STATE_SUBMITTED"}}}),
        ev({"artifactUpdate": {"artifact": {}}}),
        ev({"kind": "status-update", "final": False, "status": {"state": "working"}}),
        b"not json",
        b"[]",
    ],
)
def test_not_terminal(data):
    assert not is_terminal_event(data)


def test_sse_framing_splits_lines():
    assert sse(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert sse(b"a\nb") == b"data: a\ndata: b\n\n"
