"""Issue #12, overload: callers send faster than the agents drain. The queues stay within
their limits, the surplus is refused with 429 + Retry-After (reason queue_full), and
nothing that was accepted is lost (a short run of bench.chaos --overload)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.chaos.history import load
from tests.chaos.test_short_run import REPO, _row

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_a_short_overload_run_bounds_queues_and_refuses_clearly(tmp_path: Path):
    work = tmp_path / "overload"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--overload", "--duration", "6", "--rate", "30"]
        + ["--workspaces", "2", "--faults", "", "--max-queue", "8", "--max-queue-age", "5"]
        + ["--work", "0.4", "--refusals", "2", "--settle", "40", "--seed", "3"]
        + ["--workdir", str(work)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    summary = (work / "summary.txt").read_text()
    assert "RESULT: PASS" in summary and re.search(r"^violations\s+0$", summary, re.M), summary
    # the agents could not keep up: berth refused, and the queues filled to their limit
    assert _row(summary, "refusals (429)")[0] >= 20, summary
    for ws in ("p0", "p1"):
        row = re.search(rf"^\s+{ws}\s+(\d+)\s+(\d+)\s", summary, re.M)
        assert row, summary
        deepest, limit = int(row.group(1)), int(row.group(2))
        assert limit == 8 and 6 <= deepest <= 8 + 5, summary
    # every message is either done or was never accepted (refused until its caller gave up)
    messages = int(re.search(r"^messages\s+(\d+)", summary, re.M).group(1))  # type: ignore[union-attr]
    done, never = _row(summary, "final done")[0], _row(summary, "never accepted")[0]
    assert done + never == messages and done >= 50 and never >= 10, summary
    records = load(work / "history.jsonl")
    refusals = [r for r in records if r["type"] == "call" and r.get("status_code") == 429]
    assert refusals and all(r["retry_after"] and r["reason"] == "queue_full" for r in refusals)
