"""berth's delivery log on PostgreSQL through the fast lane's own writer (src/berth/lane/lane.c,
berth_lane_write): the `proxy` shape of bench/delivery_log.py, compiled.

The lane is built here from berth's sources with -DLANE_LOG_BENCH (a build berth never
makes: berth builds the lane without it). In that build, BERTH_LANE_LOG_BENCH replaces the
lane's callers and agents with `producers` loops inside the lane's event loop. Everything
else is the lane as berth runs it: its writer thread, its group commit, its one statement a
flush (berth_lane_write, installed by berth's migrations) and its rules. Each producer
accepts its next message (the operator's, to the bench's workspaces in turn) as soon as its
last accept is committed, as the Python `proxy` row's producers do. A message the accept
took is forwarded at once to an agent that answers at once, so its settle (done, with a
reply) is queued with the producer's next accept. There is no HTTP and no agent, as in
every other row of the bench.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LaneRun", "build_lane_bench", "run_lane"]

SRC = Path(__file__).resolve().parents[1] / "src" / "berth" / "lane"


@dataclass
class LaneRun:
    producers: int
    rate: float  # deliveries settled per second
    accepted: int
    refused: int  # accepts the lane's guard left to Python (none expected here)
    settled: int
    p50_ms: float  # an accept, from its producer's side
    p99_ms: float
    writes_per_flush: float
    host_cpu_us: float | None  # the whole host's CPU per delivery


def build_lane_bench(out_dir: Path) -> tuple[Path | None, str]:
    """The lane, built for this bench; (None, why) when it cannot be."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None, "no gcc"
    include = None
    pg_config = shutil.which("pg_config")
    if pg_config:
        done = subprocess.run([pg_config, "--includedir"], capture_output=True, text=True)
        include = done.stdout.strip() if done.returncode == 0 else None
    include = include or "/usr/include/postgresql"
    exe = out_dir / "berth-lane-log-bench"
    cmd = [gcc, "-O2", "-DLANE_PG", "-DLANE_LOG_BENCH", f"-I{include}", "-o", str(exe),
           str(SRC / "lane.c"), "-lsqlite3", "-lpthread", "-lcrypto", "-lpq"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return None, f"gcc failed: {done.stderr.strip()[-500:]}"
    return exe, ""


async def run_lane(
    exe: Path,
    url: str,
    workspaces: list[str],
    *,
    producers: int,
    seconds: float,
    host_cpu: Callable[[], tuple[int, int, int]] | None = None,
) -> LaneRun:
    """One run of the lane's log alone on the database at `url` (berth's schema, migrated,
    with `workspaces` online on a loopback agent URL)."""
    with tempfile.TemporaryDirectory(prefix="berth-lane-bench-") as tmp:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "BERTH_LANE_PG": url,
            "BERTH_LANE_UPSTREAM": str(Path(tmp) / "none.sock"),  # never used
            "BERTH_LANE_HANDOFF": str(Path(tmp) / "none-handoff.sock"),
            "BERTH_LANE_OWNER": "bench:lane",
            "BERTH_LANE_SECRET": "bench",
            "BERTH_LANE_LOG_BENCH": " ".join([str(producers), str(seconds), *workspaces]),
        }
        h0 = host_cpu() if host_cpu else None
        proc = await asyncio.create_subprocess_exec(
            str(exe), env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), seconds + 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError("the lane's log bench did not end") from None
        h1 = host_cpu() if host_cpu else None
    text = err.decode(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the lane's log bench failed ({proc.returncode}): {text[-1500:]}")
    r = json.loads(lines[-1])
    host = None
    if r["settled"] and h0 is not None and h1 is not None and h1[2] > h0[2]:
        busy = (h1[0] - h0[0]) - (h1[1] - h0[1])  # steal is another guest's time
        host = busy / os.sysconf("SC_CLK_TCK") / r["settled"] * 1e6
    return LaneRun(
        producers=producers,
        rate=r["settled"] / r["seconds"],
        accepted=r["accepted"],
        refused=r["refused"],
        settled=r["settled"],
        p50_ms=r["accept_p50_ms"],
        p99_ms=r["accept_p99_ms"],
        writes_per_flush=r["writes"] / max(r["flushes"], 1),
        host_cpu_us=host,
    )
