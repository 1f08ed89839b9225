"""Canaries at the service layer: the split of new messages, continuations pinned to the
version that owns their task, automatic rollback of a failing version, promotion and
rollback by hand, a canary that exits, and the figures in the record."""

from __future__ import annotations

import json
from typing import Any

import pytest

from berth.domain.deploy import judge_canary
from berth.domain.errors import Conflict, InvalidInput, MessageIdReused
from berth.domain.restart import Phase
from berth.ports import AgentReply
from berth.wire import rpc_error, rpc_result
from tests.service.fakes import Agent, world
from tests.service.test_lifecycle import _finished, _until


def tagged(tag: str, fail: bool = False):  # type: ignore[no-untyped-def]
    """A handler that answers in the caller's context (or a new one), naming its version."""

    async def handle(agent: Agent, doc: dict[str, Any]) -> AgentReply:
        msg = doc["params"]["message"]
        agent.executed.append(msg["messageId"])
        if fail:
            return AgentReply(200, rpc_error(doc.get("id"), -32603, "version is broken"))
        ctx = msg.get("contextId") or f"ctx-{msg['messageId']}"
        reply = {"role": "ROLE_AGENT", "contextId": ctx, "parts": [{"text": tag}]}
        if msg.get("taskId"):
            reply["taskId"] = msg["taskId"]
        return AgentReply(200, rpc_result(doc.get("id"), {"message": reply}))

    return handle


async def _send(
    w: Any, ws: Any, mid: str, *, caller: str = "operator", text: str | None = None, **ids: str
) -> dict[str, Any]:
    parts = [{"text": text or mid}]
    msg: dict[str, Any] = {"role": "ROLE_USER", "messageId": mid, "parts": parts}
    msg.update(ids)
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": msg}}
    ).encode()
    reply = await w.c.proxy.handle(ws, body, {"x-berth-wait": "5"}, caller)
    return json.loads(reply.body)  # type: ignore[no-any-return]


def _text(doc: dict[str, Any]) -> str:
    return doc["result"]["message"]["parts"][0]["text"] if "result" in doc else "error"


async def _canary_agent(w: Any, ws: Any, version: int = 2) -> Agent:
    await _until(lambda: (ws.id, version) in w.runtime.versions)
    return w.runtime.versions[(ws.id, version)]  # type: ignore[no-any-return]


async def _canary_running(w: Any, ws: Any) -> None:
    await _until(lambda: (p := w.c.roster.peek(ws.id).peer) is not None and p.canary is not None)


async def test_a_canary_splits_new_messages_pins_continuations_and_is_promoted() -> None:
    async with world() as w:
        ws = await w.create("a", restart_mode="replace")
        w.agent(ws).handler = tagged("v1")
        before = _text(await _send(w, ws, "early"))  # work started before the deploy
        assert before == "v1"
        r = await w.c.workspaces.deploy("a", {"canary": 50, "canary_seconds": 30})
        (await _canary_agent(w, ws)).handler = tagged("v2")
        await _canary_running(w, ws)
        answers = {f"m{i}": _text(await _send(w, ws, f"m{i}")) for i in range(40)}
        assert set(answers.values()) == {"v1", "v2"}  # both versions took new messages
        assert 8 <= list(answers.values()).count("v2") <= 32
        # continuations follow the version that answered first in their context
        for mid, tag in list(answers.items())[:10]:
            assert _text(await _send(w, ws, f"{mid}-again", contextId=f"ctx-{mid}")) == tag
        # a task from before the deploy stays on the old version
        assert _text(await _send(w, ws, "cont", taskId="t-early", contextId="ctx-early")) == "v1"
        await w.c.workspaces.decide("a", "promote")
        r = await _finished(w, ws.id, r.id)
        assert r.phase is Phase.DONE, r.error
        assert [p.phase for p in r.phases] == [
            Phase.STARTING,
            Phase.CANARY,
            Phase.SWITCH,
            Phase.DRAINING,
            Phase.STOPPING,
        ]
        assert r.versions is not None and r.versions["decision"]["why"] == "by hand"
        figs = r.versions["figures"]
        assert figs["2"]["messages"] >= 8 and figs["1"]["messages"] >= 8
        assert figs["1"]["agent_errors"] == figs["2"]["agent_errors"] == 0
        assert sum(f["messages"] for f in figs.values()) == 40 + 11
        now = await w.c.roster.get(ws.id)
        assert now.version == 2 and now.peer is None
        assert _text(await _send(w, ws, "after")) == "v2"


async def test_a_failing_canary_rolls_back_by_itself() -> None:
    async with world() as w:
        ws = await w.create("a", restart_mode="replace")
        w.agent(ws).handler = tagged("v1")
        r = await w.c.workspaces.deploy(
            "a", {"canary": 50, "canary_seconds": 1.5, "env": {"V": "2"}}
        )
        (await _canary_agent(w, ws)).handler = tagged("v2", fail=True)
        await _canary_running(w, ws)
        for i in range(20):
            await _send(w, ws, f"m{i}")
        r = await _finished(w, ws.id, r.id)
        assert r.phase is Phase.ROLLED_BACK, r.error
        assert [p.phase for p in r.phases] == [Phase.STARTING, Phase.CANARY, Phase.ROLLBACK]
        assert r.versions is not None and r.versions["decision"]["result"] == "rollback"
        figs = r.versions["figures"]
        assert figs["2"]["agent_errors"] == figs["2"]["messages"] > 0
        assert figs["1"]["agent_errors"] == 0 and figs["1"]["ok"] > 0
        now = await w.c.roster.get(ws.id)
        assert (now.version, now.env, now.peer, now.restart_count) == (1, {}, None, 0)
        assert not w.runtime.versions[(ws.id, 2)].alive and w.runtime.versions[(ws.id, 1)].alive
        assert _text(await _send(w, ws, "after")) == "v1"


async def test_rollback_by_hand_and_a_canary_that_exits() -> None:
    async with world() as w:
        ws = await w.create("a", restart_mode="replace")
        r = await w.c.workspaces.deploy("a", {"canary": 10, "canary_seconds": 30})
        await _canary_running(w, ws)
        await w.c.workspaces.decide("a", "rollback")
        r = await _finished(w, ws.id, r.id)
        assert r.phase is Phase.ROLLED_BACK and r.versions["decision"]["why"] == "by hand"  # type: ignore[index]
        with pytest.raises(Conflict, match="no canary"):
            await w.c.workspaces.decide("a", "promote")
        r = await w.c.workspaces.deploy("a", {"canary": 10, "canary_seconds": 30})
        await _canary_running(w, ws)
        w.runtime._exit(ws.id, -9, (await w.c.roster.get(ws.id)).peer.version)  # type: ignore[union-attr]
        r = await _finished(w, ws.id, r.id)
        assert r.phase is Phase.ROLLED_BACK
        assert "exited" in r.versions["decision"]["why"]  # type: ignore[index]
        now = await w.c.roster.get(ws.id)
        assert now.version == 1 and now.crash_count == 0 and now.state.value == "online"


async def test_canary_input_rules() -> None:
    async with world() as w:
        await w.create("plain")
        with pytest.raises(Conflict, match="restart_mode replace"):
            await w.c.workspaces.deploy("plain", {"canary": 10})
        for bad, match in (
            ({"canary": 0}, "1 to 99"),
            ({"canary": 100}, "1 to 99"),
            ({"canary": 5, "mode": "stop-first"}, "stop-first"),
            ({"canary_seconds": 5}, "only with canary"),
            ({"canary": 5, "canary_seconds": 0}, "exclusive"),
        ):
            with pytest.raises(InvalidInput, match=match):
                await w.c.workspaces.deploy("plain", bad)


def test_judge_canary() -> None:
    ok = {"messages": 10, "ok": 10, "agent_errors": 0, "crashes": 0, "dead": 0}
    bad = {"messages": 10, "ok": 7, "agent_errors": 3, "crashes": 0, "dead": 0}
    crashing = {"messages": 0, "ok": 0, "agent_errors": 0, "crashes": 2, "dead": 0}
    assert judge_canary(ok, bad)[0] == "rollback"
    assert judge_canary(bad, bad)[0] == "promote"  # no worse than the old one
    assert judge_canary(ok, {**ok, "messages": 0, "ok": 0})[0] == "promote"  # no evidence
    assert judge_canary(ok, crashing)[0] == "rollback"
    assert judge_canary(ok, {**ok, "agent_errors": 1, "ok": 9})[0] == "promote"  # tolerance
    assert "failure rate 30%" in judge_canary(ok, bad)[1]


async def test_a_canary_keeps_callers_apart_on_both_versions() -> None:
    """Issue 10 through the split: a messageId is the caller's own whichever version takes
    it, each version is told who called, and a messageId reused for another request is
    refused before either version sees it."""
    async with world() as w:
        ws = await w.create("a", restart_mode="replace")
        v1 = w.agent(ws)
        v1.handler = tagged("v1")
        r = await w.c.workspaces.deploy("a", {"canary": 50, "canary_seconds": 30})
        v2 = await _canary_agent(w, ws)
        v2.handler = tagged("v2")
        await _canary_running(w, ws)
        callers = ("workspace:x", "caller:y")
        for i in range(12):
            for caller in callers:
                assert _text(await _send(w, ws, f"m{i}", caller=caller)) in ("v1", "v2")
        # each caller's messageId is a delivery of its own, on either version
        for agent in (v1, v2):
            got = [h["x-berth-caller"] for h in agent.headers if "x-berth-caller" in h]
            assert set(got) == set(callers)  # both versions served both callers
        assert len(v1.executed) + len(v2.executed) == 24
        log = await w.c.deliveries.recent(ws.id, limit=100)
        assert sorted({(d.caller, d.message_id) for d in log}) == sorted(
            (c, f"m{i}") for c in callers for i in range(12)
        )
        # the same request again: the stored reply, nothing runs; another request: refused
        again = _text(await _send(w, ws, "m0", caller="caller:y"))
        assert again in ("v1", "v2")
        with pytest.raises(MessageIdReused):
            await _send(w, ws, "m0", caller="caller:y", text="something else")
        assert len(v1.executed) + len(v2.executed) == 24
        await w.c.workspaces.decide("a", "rollback")
        assert (await _finished(w, ws.id, r.id)).phase is Phase.ROLLED_BACK
