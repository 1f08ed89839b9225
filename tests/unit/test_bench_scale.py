"""bench/scale.py end to end at a small size: berth as it runs by default (its fast lane
on SQLite, where it builds), many external workspaces on multi-identity agents, every row
of its table printed with figures (a short run, so that the bench cannot rot between the
runs that use it)."""

from __future__ import annotations

import os
import re

import pytest

from tests.unit.bench_run import run_bench

pytestmark = pytest.mark.slow


def test_the_scale_bench_measures_berth_and_its_lane_at_a_small_size() -> None:
    from berth.lane.build import build_lane, cache_dir

    if build_lane(cache_dir(), quiet=True) is None:  # no gcc or libsqlite3-dev here
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the fast lane cannot be built (CI=true: scripts/test installs gcc)")
        pytest.skip("the fast lane cannot be built here")
    out = run_bench(
        "scale.py", "--n", "20", "--agents", "2", "--idle-seconds", "1",
        "--send-seconds", "0.5", "--rounds", "1", "--concurrency", "4",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    stdout = out.stdout
    idle = re.search(r"^idle CPU \(% of a core\)\s+\|(.*)\|(.*)\|", stdout, re.M)
    assert idle is not None, stdout
    # berth's default on SQLite: its fast lane runs, and its process is counted
    assert re.search(r"[\d.]+ % \(lane [\d.]+ %\)", idle[2]), idle[0]
    for row in ("RSS", "GET /v1/workspaces p50/p99", "GET /metrics p50/p99"):
        assert re.search(rf"^{re.escape(row)}\s+\|\s+[\d.]+", stdout, re.M), row
    sends = re.search(
        r"^sends spread over all 20, c=4\s+\|\s+\|\s+(\d+) msg/s.*err (\d+)", stdout, re.M
    )
    assert sends is not None and int(sends[1]) > 0 and sends[2] == "0", stdout
    restart = re.search(
        r"during a restart of one\s+\|\s+\|.*\((\d+) sends, err (\d+)\)", stdout, re.M
    )
    assert restart is not None and restart[2] == "0", stdout
