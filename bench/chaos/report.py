"""The summary table of a chaos run, and a re-check of a finished run's history."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from bench.chaos.checker import Report, check, parse_executions
from bench.chaos.history import FINAL_STATUSES, load
from bench.chaos.overload import summary_lines

__all__ = ["recheck", "summary"]


def summary(
    rep: Report, a: argparse.Namespace, targets: dict[str, int], seconds: float, sent: int
) -> str:
    setup = f"{a.replicas} replicas on PostgreSQL + Redis" if a.replicas else "one berth on SQLite"
    lines = [
        "",
        f"berth chaos: {setup}; {a.workspaces} process + {a.external} external workspaces; "
        f"{a.rate:g} msg/s; {seconds:.0f} s"
        + (
            f"; overload: max_queue {a.max_queue}, max_queue_age {a.max_queue_age:g} s, "
            f"~{a.work:g} s of work a message, callers give up after {a.refusals} 429s"
            if getattr(a, "overload", False)
            else ""
        ),
        "",
        f"{'faults':<28}{'injected':>10}{'target':>8}{'failed':>8}",
    ]
    for k in sorted(set(targets) | set(rep.faults) | set(rep.faults_failed)):
        lines.append(f"  {k:<26}{rep.faults[k]:>10}{targets.get(k, 0):>8}{rep.faults_failed[k]:>8}")
    lines += ["", f"{'messages':<28}{rep.messages:>10}  (sends started {sent})"]
    lines.append(f"  {'accepted (caller told)':<26}{rep.counts['accepted (caller told)']:>10}")
    lines.append(f"  {'never accepted':<26}{rep.counts['never accepted']:>10}")
    for s in FINAL_STATUSES:
        lines.append(f"  {'final ' + s:<26}{rep.final_status[s]:>10}")
    others = {k: v for k, v in rep.final_status.items() if k not in FINAL_STATUSES}
    for s, n in sorted(others.items()):
        lines.append(f"  {'final ' + s:<26}{n:>10}")
    lines.append(f"  {'executions cut (re-run)':<26}{rep.counts['executions cut']:>10}")
    lines.append(
        f"  {'ended, unrecorded (killed)':<26}{rep.counts['ended, unrecorded (agent killed)']:>10}"
    )
    lines.append(f"  {'order inversions excused':<26}{rep.counts['order_excused']:>10}")
    lines += ["", f"{'caller attempts':<28}{sum(rep.outcomes.values()):>10}"]
    for k, n in sorted(rep.outcomes.items()):
        lines.append(f"  {k:<26}{n:>10}")
    lines += summary_lines(rep.queues, rep.counts)
    by = rep.by_kind()
    lines += ["", f"{'violations':<28}{len(rep.violations):>10}"]
    for k, n in sorted(by.items()):
        lines.append(f"  {k:<26}{n:>10}")
    for v in rep.violations[:40]:
        lines.append(f"  ! {v}")
    if rep.dead:
        lines += [
            "",
            "ended by berth's own rules (dead after max_attempts counted failed forwards):",
        ]
        reasons = Counter(re.sub(r"\d+", "N", why)[:110] for _, _, why in rep.dead)
        lines += [f"  {n:>6}  {why}" for why, n in reasons.most_common()]
        lines += [f"  e.g. {ws}/{mid}" for ws, mid, _ in rep.dead[:3]]
    if rep.unrecorded:
        lines += [
            "",
            f"ran to their end, agent killed before recording, run again ({len(rep.unrecorded)}):",
        ]
        lines += [f"  {ws}/{mid}: {n}x" for ws, mid, n in rep.unrecorded[:20]]
    if rep.cut:
        lines += ["", f"executions cut mid-way and run again ({len(rep.cut)} messages), first 20:"]
        lines += [f"  {ws}/{mid}: {n} cut" for ws, mid, n in rep.cut[:20]]
    short = [k for k, n in targets.items() if rep.faults[k] < n]
    if short:
        lines += ["", f"note: fault targets not reached in time: {short}"]
    lines += [
        "",
        "RESULT: "
        + ("PASS (no violation)" if rep.ok else f"FAIL ({len(rep.violations)} violations)"),
    ]
    return "\n".join(lines) + "\n"


def recheck(a: argparse.Namespace) -> int:
    """The checker alone, on a run's history.jsonl and the agent logs it names."""
    records = load(a.recheck / "history.jsonl")
    executions = {
        r["ws"]: [x for p in r["logs"] for x in parse_executions(Path(p).read_text())]
        for r in records
        if r.get("type") == "agents"
    }
    report = check(records, executions)
    print(summary(report, a, {}, 0, 0), end="")
    return 0 if report.ok else 1
