"""The suite's safety net (tests/conftest.py): it finds the agents a test server left
running by their state dir, and only those."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import agents_under


def _sleeper(state: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BERTH_STATE_DIR": str(state)}
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], env=env, start_new_session=True
    )


def test_agents_under_finds_the_agents_of_a_data_dir_and_no_other(tmp_path: Path) -> None:
    inside = _sleeper(tmp_path / "berth" / "workspaces" / "w1" / "state")
    beside = _sleeper(Path(str(tmp_path) + "-other") / "state")  # a prefix of the path only
    try:
        deadline = time.monotonic() + 10
        while inside.pid not in agents_under(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        found = agents_under(tmp_path)
        assert inside.pid in found
        assert beside.pid not in found
    finally:
        for p in (inside, beside):
            p.kill()
            p.wait()
    assert inside.pid not in agents_under(tmp_path)  # gone (a zombie is not counted)
