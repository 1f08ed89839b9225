"""bench/inproc.py (berth's message path in process) runs and prints its figures: a short
version of the benchmark, so that it cannot rot between the runs that use it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_the_in_process_bench_sends_and_prints_cpu_per_send(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "inproc.py"),
            "--concurrency",
            "4",
            "--n",
            "200",
            "--profile",
            str(tmp_path / "p.pstats"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r"c=4 n=200: ([\d,]+) sends/s, loop-thread CPU ([\d.]+) us per send", out.stdout)
    assert m is not None, out.stdout
    assert float(m[1].replace(",", "")) > 0 and float(m[2]) > 0
    assert (tmp_path / "p.pstats").stat().st_size > 0
