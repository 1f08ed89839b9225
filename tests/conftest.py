from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import BerthServer

os.environ.setdefault("OTEL_INSTRUMENTATION_A2A_SDK_ENABLED", "false")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def berth_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BerthServer]:
    """A real `berth serve` on the embedded default (SQLite, process runtime). When the
    test fails, the server's log ends its report (CI keeps no files)."""
    server = BerthServer(tmp_path / "berth").start()
    try:
        yield server
    finally:
        server.stop()
        server.kill9()
        if request.node.stash.get(_CALL_FAILED, False):
            server.print_log_tail()
