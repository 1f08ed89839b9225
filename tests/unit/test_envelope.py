import json

import pytest

from berth.api.errors import rpc_error_response
from berth.domain.delivery import Outcome
from berth.domain.errors import RpcInvalid
from berth.ports import AgentReply
from berth.services.proxy import parse_envelope, wait_seconds
from berth.services.replies import classify
from berth.wire import is_draining_error


def code_of(raw: bytes) -> int:
    with pytest.raises(RpcInvalid) as e:
        parse_envelope(raw)
    return json.loads(rpc_error_response(e.value).body)["error"]["code"]


@pytest.mark.parametrize(
    "raw,code",
    [
        (b"{nope", -32700),
        (b"", -32700),
        (b"[]", -32600),
        (b'[{"jsonrpc":"2.0","method":"x"}]', -32600),
        (b'{"method":"x"}', -32600),
        (b'{"jsonrpc":"1.0","method":"x"}', -32600),
        (b'"hi"', -32600),
        (b'{"jsonrpc":"2.0","method":5}', -32600),
        (b'{"jsonrpc":"2.0","method":"x","params":3}', -32602),
    ],
)
def test_bad_envelopes(raw, code):
    assert code_of(raw) == code


def test_good_envelope_passes():
    assert parse_envelope(b'{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{}}')["id"] == 1


@pytest.mark.parametrize("value", ["-1", "abc", "1e9", "nan"])
def test_bad_wait_header(value):
    with pytest.raises(RpcInvalid) as e:
        wait_seconds(value, 300)
    assert rpc_error_response(e.value).status_code == 400


def test_wait_header_default_and_zero():
    assert wait_seconds(None, 300) == 300 and wait_seconds("0", 300) == 0


def reply(status: int, doc) -> AgentReply:
    return AgentReply(status, json.dumps(doc).encode() if not isinstance(doc, bytes) else doc)


def test_classify():
    ok = {"jsonrpc": "2.0", "id": 1, "result": {"message": {}}}
    err = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32001, "message": "task not found"}}
    v1_draining = {
        "jsonrpc": "2.0",
        "id": 1,
        "error": {
            "code": -32603,
            "message": "draining",
            "data": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "DRAINING",
                    "metadata": {},
                }
            ],
        },
    }
    v03_draining = {
        "jsonrpc": "2.0",
        "id": 1,
        "error": {"code": -32603, "message": "x", "data": {"reason": "DRAINING"}},
    }
    assert classify(reply(200, ok)) is Outcome.REPLIED
    assert classify(reply(200, err)) is Outcome.REPLIED
    assert classify(reply(200, v1_draining)) is Outcome.DRAINING
    assert classify(reply(200, v03_draining)) is Outcome.DRAINING
    assert classify(reply(502, b"bad gateway")) is Outcome.TRANSPORT
    assert classify(reply(200, b"<html>")) is Outcome.TRANSPORT
    assert classify(reply(404, b"not found")) is Outcome.REJECTED
    assert classify(reply(429, b"slow down")) is Outcome.TRANSPORT
    assert not is_draining_error({"code": -32603, "data": {"reason": "OTHER"}})
    assert not is_draining_error("DRAINING")
