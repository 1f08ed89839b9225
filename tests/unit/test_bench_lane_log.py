"""bench/lane_log.py on PostgreSQL with the lane (a short run, so that it cannot rot): the
fast lane in front of a PostgreSQL berth serves the sends, and every message a caller was
answered 202 for ends `done` in berth's store."""

from __future__ import annotations

import re

import pytest

from tests.services import require_postgres
from tests.unit.bench_run import run_bench

pytestmark = pytest.mark.postgres


def test_the_lane_serves_a_postgresql_berth_and_loses_nothing() -> None:
    pg = require_postgres()
    out = run_bench(
        "lane_log.py", "--seconds", "1", "--warmup", "0.3", "--database-url", pg, "--no-floor",
        timeout=150,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    text = out.stdout
    assert "berth_lane_up 1" in text, text[-3000:]
    served = re.search(r"the lane served ([\d.]+) % of them \(([\d,]+);", text)
    assert served is not None and float(served[1]) > 90, text[-3000:]
    kept = re.search(r"nothing lost: ([\d,]+) 2xx answers, ([\d,]+) deliveries done", text)
    assert kept is not None and kept[1] == kept[2] and kept[1] != "0", text[-3000:]
    assert re.search(r"errors 0, resent \d+\)", text), text[-3000:]
