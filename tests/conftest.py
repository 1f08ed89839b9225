from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import BerthServer

os.environ.setdefault("OTEL_INSTRUMENTATION_A2A_SDK_ENABLED", "false")


@pytest.fixture
def berth_server(tmp_path: Path) -> Iterator[BerthServer]:
    """A real `berth serve` on the embedded default (SQLite, process runtime)."""
    server = BerthServer(tmp_path / "berth").start()
    try:
        yield server
    finally:
        server.stop()
        server.kill9()
