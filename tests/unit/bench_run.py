"""Running a bench script as its smoke tests do: in a process group of its own, so that a
run cut short by the timeout takes the berths, agents and proxies it started along."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_bench(script: str, *args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """bench/<script> with `args`, to its end (under pytest's own 180 s by default)."""
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=20)
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
