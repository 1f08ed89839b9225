"""bench/proxy.py with --rounds: every target runs in turn each round, and each level ends
with each target's median and range against the bare proxy of the same round (a short
run, so that the bench cannot rot between the runs that use it)."""

from __future__ import annotations

import re

from tests.unit.bench_run import run_bench


def test_rounds_pair_each_target_with_the_bare_proxy_of_its_round() -> None:
    out = run_bench(
        "proxy.py", "--seconds", "0.3", "--concurrency", "2", "--rounds", "2", timeout=150
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert text.count("# c=2: round") == 2
    assert text.count("bare aiohttp proxy           c=2") == 2
    summary = [line for line in text.splitlines() if line.startswith("  == berth (FULL), c=2")]
    assert len(summary) == 1, text
    m = re.search(
        r"2 rounds, .*throughput ([\d.]+) % \(([\d.]+) % to ([\d.]+) %\), "
        r"added p50 ([-+][\d.]+) ms \(([-+][\d.]+) ms to ([-+][\d.]+) ms\)",
        summary[0],
    )
    assert m is not None, summary[0]
    median, low, high = (float(m[i]) for i in (1, 2, 3))
    assert 0 < low <= median <= high
    assert float(m[5]) <= float(m[4]) <= float(m[6])
    assert "errors 0" in text and not re.search(r"errors [1-9]", text)
