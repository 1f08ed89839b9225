"""The chaos checker must be able to fail: synthetic histories, each with one known fault."""

from __future__ import annotations

from typing import Any

import pytest

from bench.chaos.checker import check, parse_executions
from bench.chaos.history import History, load


def call(ws: str, mid: str, outcome: str, t0: float, t1: float, **kw: Any) -> dict[str, Any]:
    rec = {"type": "call", "ws": ws, "mid": mid, "text": mid, "op": "send", "attempt": 1}
    return {**rec, "t0": t0, "t1": t1, "outcome": outcome, **kw}


def final(ws: str, mid: str, status: str | None = "done", **kw: Any) -> dict[str, Any]:
    if status is None:
        return {"type": "final", "ws": ws, "mid": mid, "delivery": None}
    d = {"status": status, "attempts": 0, "forwards": 1, "reason": None, "finished_at": 100.0}
    d["reply_text"] = f"echo: {mid}" if status == "done" else None
    return {"type": "final", "ws": ws, "mid": mid, "delivery": {**d, **kw}}


def clean() -> tuple[list[dict[str, Any]], dict[str, list[tuple[str, str]]]]:
    """Three messages to a max_concurrency-1 workspace, sent one after another, all done."""
    records: list[dict[str, Any]] = [{"type": "workspace", "ws": "w", "max_concurrency": 1}]
    lines: list[tuple[str, str]] = []
    for i, mid in enumerate(["a", "b", "c"]):
        records.append(call("w", mid, "done", i, i + 0.5, reply=f"echo: {mid}"))
        records.append(final("w", mid))
        lines += [("start", mid), ("done", mid)]
    return records, {"w": lines}


def kinds(records: list[dict[str, Any]], ex: dict[str, list[tuple[str, str]]]) -> list[str]:
    return sorted(v.kind for v in check(records, ex).violations)


def test_a_clean_history_passes():
    records, ex = clean()
    rep = check(records, ex)
    assert rep.ok, rep.violations
    assert rep.messages == 3 and rep.final_status["done"] == 3
    assert rep.counts["accepted (caller told)"] == 3


def test_a_lost_message_is_found():
    records, ex = clean()
    records = [r for r in records if not (r["type"] == "final" and r["mid"] == "b")]
    records.append(final("w", "b", None))  # berth has no delivery for it
    assert kinds(records, ex) == ["lost"]


def test_a_message_started_but_unknown_to_berth_is_lost():
    records, ex = clean()
    records.append(call("w", "d", "unknown", 5, 6, detail="ConnectError"))
    records.append(final("w", "d", None))
    assert check(records, ex).ok  # never accepted, never ran: the caller knows it failed
    ex["w"].append(("start", "d"))
    assert kinds(records, ex) == ["lost"]


def test_a_duplicate_execution_is_found():
    records, ex = clean()
    ex["w"] += [("start", "a"), ("done", "a")]  # ran to its end twice
    assert kinds(records, ex) == ["duplicate"]


def _kill(ws: str, t0: float) -> dict[str, Any]:
    return {"type": "fault", "kind": "agent_kill", "target": ws, "t0": t0, "t1": t0 + 0.1}


def test_an_end_the_killed_agent_never_recorded_is_excused_only_with_a_new_process_and_a_kill():
    records, ex = clean()
    # a ran to its end, the agent was killed before recording it, a new one ran it again
    ex["w"] = [("start", "a"), ("done", "a"), ("boot", "2"), ("start", "a"), ("done", "a")]
    ex["w"] += [x for x in clean()[1]["w"] if x[1] != "a"]
    assert kinds(records, ex) == ["duplicate"]  # no kill in the history: a real duplicate
    records.append(_kill("w", 0.2))
    rep = check(records, ex)
    assert rep.ok, rep.violations
    assert rep.unrecorded == [("w", "a", 1)]
    assert rep.counts["ended, unrecorded (agent killed)"] == 1
    # the same process ran it twice: the kill explains nothing
    ex["w"] = [("boot", "2"), ("start", "a"), ("done", "a"), ("start", "a"), ("done", "a")]
    ex["w"] += [x for x in clean()[1]["w"] if x[1] != "a"]
    assert kinds(records, ex) == ["duplicate"]
    # a kill of another workspace, or one after the message ended, explains nothing either
    ex["w"] = [("start", "a"), ("done", "a"), ("boot", "2"), ("start", "a"), ("done", "a")]
    ex["w"] += [x for x in clean()[1]["w"] if x[1] != "a"]
    records[-1] = _kill("v", 0.2)
    assert kinds(records, ex) == ["duplicate"]
    records[-1] = _kill("w", 150.0)  # after finished_at (100)
    assert kinds(records, ex) == ["duplicate"]
    # three ends over one kill: one is excused, the third is a duplicate
    records[-1] = _kill("w", 0.2)
    ex["w"] += [("start", "a"), ("done", "a")]
    assert kinds(records, ex) == ["duplicate"]


def test_a_cut_execution_is_counted_and_needs_a_fault():
    records, ex = clean()
    ex["w"].insert(0, ("start", "a"))  # started, cut, started again and finished
    rep = check(records, ex)
    assert [v.kind for v in rep.violations] == ["cut_without_fault"]
    records.append(
        {"type": "fault", "kind": "agent_kill", "target": "w", "t0": 0.2, "t1": 0.3, "ok": True}
    )
    rep = check(records, ex)
    assert rep.ok and rep.cut == [("w", "a", 1)] and rep.counts["executions cut"] == 1
    assert rep.faults["agent_kill"] == 1


def test_a_graceful_stop_of_a_replica_excuses_a_cut_on_every_workspace():
    """A replica stopped with SIGTERM cuts what its grace did not let finish, on any
    workspace ("*"): a cut during it is excused, as after a kill -9."""
    records, ex = clean()
    ex["w"].insert(0, ("start", "a"))
    records.append(
        {"type": "fault", "kind": "replica_stop", "target": "*", "t0": 0.2, "t1": 0.3, "ok": True}
    )
    rep = check(records, ex)
    assert rep.ok and rep.cut == [("w", "a", 1)]


def test_an_order_inversion_is_found():
    records, ex = clean()
    ex["w"] = [("start", "b"), ("done", "b"), ("start", "a"), ("done", "a")] + ex["w"][4:]
    rep = check(records, ex)
    assert [v.kind for v in rep.violations] == ["order"] and rep.violations[0].mid == "b"


def test_order_is_not_checked_where_concurrency_is_above_one():
    records, ex = clean()
    records[0] = {"type": "workspace", "ws": "w", "max_concurrency": 4}
    ex["w"] = [("start", "b"), ("done", "b"), ("start", "a"), ("done", "a")] + ex["w"][4:]
    assert check(records, ex).ok


def test_overlapping_sends_may_start_in_either_order():
    records, ex = clean()
    records[1]["t1"] = 1.5  # a was acknowledged only after b was sent: no order between them
    ex["w"] = [("start", "b"), ("done", "b"), ("start", "a"), ("done", "a")] + ex["w"][4:]
    assert check(records, ex).ok


def test_an_inversion_behind_a_failed_forward_is_excused_and_counted():
    records, ex = clean()
    records = [r for r in records if not (r["type"] == "final" and r["mid"] == "a")]
    records.append(final("w", "a", forwards=2, attempts=1))
    ex["w"] = [("start", "b"), ("done", "b"), ("start", "a"), ("done", "a")] + ex["w"][4:]
    rep = check(records, ex)
    assert rep.ok and rep.counts["order_excused"] == 1


def test_a_phantom_done_is_found():
    records, ex = clean()
    ex["w"] = [
        x for x in ex["w"] if x[1] != "c"
    ]  # the caller was told done; the agent never ran it
    assert kinds(records, ex) == ["phantom"]


def test_a_wrong_reply_is_found():
    records, ex = clean()
    records[1]["reply"] = "echo: b"
    assert kinds(records, ex) == ["wrong_reply"]


def test_dead_by_the_poison_rule_is_reported_not_a_violation():
    records, ex = clean()
    records.append(call("w", "p", "gave_up", 5, 9, status="dead"))
    records.append(final("w", "p", "dead", attempts=3, reason="crashed its agent 3 times"))
    ex["w"] += [("start", "p")] * 3
    records.append({"type": "fault", "kind": "agent_kill", "target": "w", "t0": 6, "t1": 6})
    rep = check(records, ex)
    assert rep.ok and rep.final_status["dead"] == 1 and rep.dead[0][1] == "p"


def test_dead_too_early_expired_or_unfinished_are_violations():
    records, ex = clean()
    records.append(call("w", "p", "gave_up", 5, 9, status="dead"))
    records.append(final("w", "p", "dead", attempts=1))
    records.append(call("w", "q", "accepted", 5, 5.1))
    records.append(final("w", "q", "queued"))
    records.append(call("w", "r", "gave_up", 5, 9, status="expired"))
    records.append(final("w", "r", "expired"))
    assert kinds(records, ex) == ["gave_up", "gave_up", "unfinished"]


def test_told_done_but_dead_and_an_unknown_execution_are_found():
    records, ex = clean()
    records.append(call("w", "p", "done", 5, 9, reply="echo: p"))
    records.append(final("w", "p", "dead", attempts=3))
    ex["w"] += [("start", "p"), ("start", "zz")]
    records.append({"type": "fault", "kind": "restart", "target": "*", "t0": 6, "t1": 6})
    got = kinds(records, ex)
    assert got == ["told_done_not_done", "unknown_execution"], got


@pytest.mark.parametrize("torn", [False, True])
def test_a_history_file_reads_back(tmp_path, torn):
    path = tmp_path / "history.jsonl"
    h = History(path)
    records, ex = clean()
    for r in records:
        h.add(r)
    h.close()
    if torn:  # a run killed mid-write leaves half a line
        with open(path, "a") as f:
            f.write('{"type": "call", "ws"')
    assert load(path) == records
    assert check(load(path), ex).ok
    assert parse_executions("boot 12\nstart a\ndone a\ngarbage\n\ncancel b\n") == [
        ("boot", "12"),
        ("start", "a"),
        ("done", "a"),
        ("cancel", "b"),
    ]


def test_two_deliveries_for_one_message_id_and_unexplained_errors_are_found():
    records, ex = clean()
    records[1]["delivery_id"] = "d-1"
    records.append(call("w", "a", "done", 3, 3.2, reply="echo: a", delivery_id="d-2", op="dup"))
    records.append(call("w", "b", "error", 3, 3.1, detail="HTTP 400: bad"))
    assert kinds(records, ex) == ["error", "split"]


def test_one_workspace_run_by_two_agents_is_found():
    records, ex = clean()
    records.append({"type": "agents", "ws": "w", "logs": ["/a/executions.log"]})
    assert check(records, ex).ok
    records.append({"type": "agents", "ws": "w", "logs": ["/a/x.log", "/b/x.log"]})
    assert kinds(records, ex) == ["two_agents"]


def test_recheck_of_a_stored_run_exits_1_on_a_violation(tmp_path, capsys):
    from bench.chaos.run import main

    records, ex = clean()
    log = tmp_path / "executions.log"
    log.write_text("".join(f"{k} {m}\n" for k, m in ex["w"]))
    h = History(tmp_path / "history.jsonl")
    for r in [*records, {"type": "agents", "ws": "w", "logs": [str(log)]}]:
        h.add(r)
    h.close()
    assert main(["--recheck", str(tmp_path)]) == 0
    assert "RESULT: PASS" in capsys.readouterr().out
    log.write_text("".join(f"{k} {m}\n" for k, m in ex["w"] if m != "c"))  # c never ran
    assert main(["--recheck", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "phantom" in out and "RESULT: FAIL (1 violations)" in out


def _refused(mid: str, **kw: Any) -> dict[str, Any]:
    fields = {"status_code": 429, "retry_after": "5", "reason": "queue_full", **kw}
    return call("w", mid, "refused", 5, 5.1, detail="HTTP 429 queue_full", **fields)


def _queue(depth: int, limit: int = 20) -> dict[str, Any]:
    return {"type": "queue", "ws": "w", "t": 5, "depth": depth, "age": 1.0, "max_queue": limit}


def test_overload_refusals_are_counted_apart_from_losses():
    records, ex = clean()
    records += [_refused("r"), _refused("r"), final("w", "r", None), _queue(20), _queue(24)]
    rep = check(records, ex)
    assert rep.ok, rep.violations  # refused every time and never accepted: not lost
    assert rep.counts["refused (429)"] == 2 and rep.counts["gave up refused"] == 1
    assert rep.counts["never accepted"] == 1
    assert rep.queues["w"]["depth"] == 24 and rep.queues["w"]["limit"] == 20


def test_an_unbounded_queue_and_an_unclear_refusal_are_found():
    records, ex = clean()
    records += [_queue(26), _refused("r", retry_after=None), final("w", "r", None)]
    records += [_refused("s", reason="unavailable"), final("w", "s", None)]
    assert kinds(records, ex) == ["unbounded", "unclear_refusal", "unclear_refusal"]
    # a message refused once, then accepted and done, is an ordinary done message
    records, ex = clean()
    records += [_refused("t"), call("w", "t", "done", 6, 7, reply="echo: t"), final("w", "t")]
    ex["w"] += [("start", "t"), ("done", "t")]
    rep = check(records, ex)
    assert rep.ok and rep.counts["gave up refused"] == 0 and rep.final_status["done"] == 4
