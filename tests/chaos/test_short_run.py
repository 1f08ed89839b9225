"""Issue #12: a short chaos run (SQLite, process workspaces, restarts, agent kills, one kill -9
of berth) ends with zero violations, and really injected what it says. It runs berth as it
runs by default, with its fast lane in front (docs/fast-lane.md), and checks that the lane
served sends itself."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos.history import load

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _row(summary: str, label: str) -> list[int]:
    m = re.search(rf"^\s+{re.escape(label)}\s+([\d ]+)$", summary, re.M)
    assert m, f"no row {label!r} in:\n{summary}"
    return [int(x) for x in m.group(1).split()]


@pytest.mark.timeout(600)
def test_a_short_chaos_run_has_no_violation(tmp_path: Path):
    work = tmp_path / "chaos"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--duration", "150", "--rate", "6"]
        + ["--workspaces", "3", "--faults", "restart=8,agent_kill=2,berth_kill=1"]
        + ["--drain-seconds", "1", "--start-timeout", "120", "--settle", "90", "--seed", "12"]
        + ["--workdir", str(work), "--lane"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=580,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    summary = (work / "summary.txt").read_text()
    assert "RESULT: PASS" in summary
    assert re.search(r"^violations\s+0$", summary, re.M), summary
    # the faults happened: a run that injected nothing would pass vacuously
    assert _row(summary, "berth_kill")[0] == 1, summary
    # (the run stops once the targets are reached; on a loaded machine, where a restart
    # takes 10-20 s and berth 40 s to start, it may end at --duration short of them)
    assert _row(summary, "agent_kill")[0] >= 1, summary
    assert _row(summary, "restart")[0] >= 3, summary
    messages = int(re.search(r"^messages\s+(\d+)", summary, re.M).group(1))  # type: ignore[union-attr]
    assert messages >= 200 and _row(summary, "final done")[0] >= messages * 0.95, summary
    # the history holds what the summary counted
    records = load(work / "history.jsonl")
    assert sum(1 for r in records if r["type"] == "fault" and r["ok"]) >= 5
    assert len({r["mid"] for r in records if r["type"] == "final"}) == messages
    # the lane took part (counted since berth's last start, after the kill -9)
    lane = re.search(r"^fast lane .*: (\d+) sends served by the lane", summary, re.M)
    assert lane and int(lane.group(1)) > 0, summary
