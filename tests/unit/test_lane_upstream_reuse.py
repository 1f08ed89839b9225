"""The lane reuses its connection to Python for UPSTREAM_REUSE seconds, counted from when
it saw the last answer end (later than uvicorn counts); uvicorn closes an idle one at
server.KEEP_ALIVE. Were the reuse as long as uvicorn's keep-alive, the lane would write
requests into connections uvicorn was closing at that instant, and cut their callers; the
second between them covers a lane up to a second late in reading an answer."""

from __future__ import annotations

import re
from pathlib import Path

from berth.server import KEEP_ALIVE

LANE_C = Path(__file__).resolve().parents[2] / "src/berth/lane/lane.c"


def test_the_lane_gives_up_its_python_connections_well_before_uvicorn_closes_them() -> None:
    m = re.search(r"^#define UPSTREAM_REUSE ([\d.]+)", LANE_C.read_text(), re.M)
    assert m is not None, "lane.c defines UPSTREAM_REUSE"
    assert 0 < float(m[1]) <= KEEP_ALIVE - 1
    # and it is what decides the reuse of the connection to Python
    assert "mono() - c->up_idle_since > UPSTREAM_REUSE" in LANE_C.read_text()
