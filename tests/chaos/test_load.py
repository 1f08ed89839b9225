"""How the chaos callers read berth's answers: what a caller is told decides the verdict."""

from __future__ import annotations

from bench.chaos.load import Msg, _gave_up, reply_text


def test_reply_text_of_messages_tasks_and_stream_events():
    v1 = {"result": {"message": {"parts": [{"text": "echo: hi"}]}}}
    v03 = {"result": {"kind": "message", "parts": [{"kind": "text", "text": "echo: hi"}]}}
    task = {
        "result": {
            "task": {
                "history": [{"parts": [{"text": "hi"}]}],  # the user's own text is not the reply
                "artifacts": [{"parts": [{"text": "echo: hi"}]}],
            }
        }
    }
    final_event = {
        "result": {"statusUpdate": {"status": {"message": {"parts": [{"text": "echo: hi"}]}}}}
    }
    for doc in (v1, v03, task, final_event):
        assert reply_text(doc) == "echo: hi", doc
    assert reply_text({"result": {"message": {"parts": [{"text": "something else"}]}}}) == (
        "something else"
    )
    assert reply_text({"error": {"code": -32603}}) is None
    assert reply_text("not a dict") is None


def test_berth_giving_up_is_told_apart_from_other_errors():
    dead = {"error": {"code": -32603, "data": {"berth": {"status": "dead", "reason": "poison"}}}}
    assert _gave_up(dead) == "dead"
    assert _gave_up({"error": {"code": -32603, "data": {"berth": {"status": "queued"}}}}) is None
    assert _gave_up({"error": {"code": -32603, "data": {"reason": "store_unavailable"}}}) is None
    assert _gave_up({"result": {}}) is None


def test_both_vocabularies_carry_the_message_id():
    m = Msg("w", "m-1", "hello", "send")
    v1, v03 = m.body("SendMessage"), m.body("message/send")
    assert v1["params"]["message"]["messageId"] == v03["params"]["message"]["messageId"] == "m-1"
    assert (
        v1["params"]["message"]["role"] == "ROLE_USER"
        and v03["params"]["message"]["role"] == "user"
    )
    assert v03["params"]["message"]["parts"] == [{"kind": "text", "text": "hello"}]
