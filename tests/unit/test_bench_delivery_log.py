"""bench/delivery_log.py runs every dispatch shape on both backends and prints a row per
configuration: a short version of the benchmark, so that it cannot rot (or hang) between
the runs that use it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.services import require_postgres
from tests.unit.bench_run import BENCH

pytestmark = pytest.mark.postgres


def test_the_delivery_log_bench_runs_every_shape_on_both_backends() -> None:
    pg = require_postgres()
    out = subprocess.run(
        [
            sys.executable,
            str(BENCH / "delivery_log.py"),
            "--quick",
            "--backends",
            "sqlite,postgres",
            "--dispatch",
            "proxy,ws,8",
            "--finished",
            "0",
            "--pg-modes",
            "batched",
            "--sqlite-sync",
            "FULL",
            "--database-url",
            pg,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = re.findall(r"^(sqlite FULL|pg batched)\s+(proxy|ws|8)\s+0 \|\s+(\d+)", out.stdout, re.M)
    got = {(backend, shape) for backend, shape, _ in rows}
    assert got == {(b, s) for b in ("sqlite FULL", "pg batched") for s in ("proxy", "ws", "8")}
    assert all(int(rate) > 0 for _, _, rate in rows)
    # the compiled floor of the proxy's flush, on the same table, beside berth's proxy row
    if _pgbench() is None:  # pgbench comes with PostgreSQL's server package
        assert re.search(r"^pg C floor\s+proxy\s+0 \| pgbench not found", out.stdout, re.M)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("pgbench is missing (CI=true: the compiled floor must run)")
        pytest.skip("pgbench is not installed here: the compiled floor did not run")
    floor = re.search(
        r"^pg C floor\s+proxy\s+0 \|\s+(\d+)/s, a flush ([\d.]+) ms, host CPU (\d+) us a "
        r"delivery \(pgbench, 2 connections x 4 settles \+ 4 in-flight accepts.* berth "
        r"proxy/floor\s+(\d+)%, lane/floor (\d+)%$",
        out.stdout,
        re.M,
    )
    assert floor is not None, out.stdout[-3000:]
    assert int(floor[1]) > 0 and float(floor[2]) > 0 and int(floor[3]) > 0 and int(floor[4]) > 0
    assert int(floor[5]) > 0
    # the same shape through the fast lane's own writer (built here against libpq)
    lane = re.search(
        r"^pg lane \(C\)\s+proxy\s+0 \|\s+(\d+)/s accepted -> settled, .* ([\d.]+) writes a "
        r"flush .*; ([\d,]+) settled, (\d+) left to Python$",
        out.stdout,
        re.M,
    )
    assert lane is not None, out.stdout[-3000:]
    assert int(lane[1]) > 0 and float(lane[2]) > 1 and int(lane[3].replace(",", "")) > 0
    assert lane[4] == "0"  # every accept taken: the bench's workspaces have room


def _pgbench() -> str | None:
    sys.path.insert(0, str(BENCH))
    try:
        from _pg_floor import find_pgbench
    finally:
        sys.path.remove(str(BENCH))
    return find_pgbench()
