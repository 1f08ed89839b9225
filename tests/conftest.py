from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import LANE_ENV, PYTHON_ENV, BerthServer, require_lane

os.environ.setdefault("OTEL_INSTRUMENTATION_A2A_SDK_ENABLED", "false")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def call_failed(request: pytest.FixtureRequest) -> Callable[[], bool]:
    """Did the test itself fail? For a fixture's teardown (which runs after the test's
    report), e.g. to print the logs of the servers it ran: CI keeps no files."""
    return lambda: request.node.stash.get(_CALL_FAILED, False)


@pytest.fixture
def berth_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BerthServer]:
    """A real `berth serve` on the embedded default (SQLite, process runtime). When the
    test fails, the server's log ends its report (CI keeps no files)."""
    path = getattr(request, "param", None)  # BOTH_PATHS runs a test twice: "python", "lane"
    lane = path == "lane"
    env = LANE_ENV if lane else PYTHON_ENV if path == "python" else None
    server = BerthServer(tmp_path / "berth", env=env).start()
    try:
        if lane:
            require_lane(server)
        yield server
    finally:
        server.stop()
        server.kill9()
        if request.node.stash.get(_CALL_FAILED, False):
            server.print_log_tail()


def agents_under(root: Path) -> list[int]:
    """Pids of live processes berth started as agents with a state dir under `root` (berth
    gives each its BERTH_STATE_DIR; agents run in sessions of their own, so a berth killed
    with -9 leaves them running, as designed: the next berth on that data dir adopts them)."""
    mine, prefix = os.getpid(), str(root).rstrip("/") + "/"
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == mine:
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        for item in env:
            if item.startswith(b"BERTH_STATE_DIR=") and item[16:].decode(
                errors="replace"
            ).startswith(prefix):
                out.append(int(entry.name))
                break
    return out


@pytest.fixture(scope="session", autouse=True)
def _no_agent_outlives_the_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Agents of the test servers that are still running when this worker's tests end (a
    server killed with -9 and never restarted) are killed, and named on stderr: nothing a
    run started is left on the machine."""
    yield
    root = tmp_path_factory.getbasetemp()
    left = agents_under(root)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if left:
        print(f"tests: killed {len(left)} agent process(es) left running: {left}", file=sys.stderr)
