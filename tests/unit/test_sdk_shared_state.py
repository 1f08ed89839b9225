"""Two versions of an agent on one state directory (a deploy): the dedupe file in shared
mode, used by two processes at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from berth.sdk import dedupe as dedupe_module
from berth.sdk.dedupe import Dedupe

DEDUPE = str(dedupe_module.__file__)


def _other_process(state: Path, script: str) -> str:
    """Run `script` in a second Python process with `d` = Dedupe(state, shared=True)."""
    # the module alone (standard library only), not the SDK package: a fast second process
    code = (
        "import asyncio, importlib.util\nfrom pathlib import Path\n"
        f"spec = importlib.util.spec_from_file_location('dedupe', {DEDUPE!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"d = m.Dedupe(Path({str(state)!r}), shared=True)\n" + textwrap.dedent(script)
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.strip()


@pytest.mark.asyncio
async def test_two_processes_share_the_results(tmp_path: Path) -> None:
    mine = Dedupe(tmp_path, shared=True)
    mine.begin("m-old")
    mine.finish("m-old", "result", b'{"answer": 1}')
    # the other version sees what this one answered, and writes while this one holds it open
    seen = _other_process(
        tmp_path,
        """
        print(d.lookup("m-old"))
        async def go():
            d.begin("m-new"); d.finish("m-new", "result", b"two")
        asyncio.run(go()); d.close()
        """,
    )
    assert seen == "('result', b'{\"answer\": 1}')"
    assert mine.lookup("m-new") == ("result", b"two")
    mine.close()


@pytest.mark.asyncio
async def test_shared_start_does_not_take_the_other_versions_work_as_cut(tmp_path: Path) -> None:
    old = Dedupe(tmp_path, shared=True)
    old.started("m1", "task-1")
    old.flush()  # a task was saved: its execution is on disk, not ended (still running)
    # the new version starts meanwhile: nothing is cut at its start
    assert _other_process(tmp_path, "print(d.cut_executions())") == "[]"
    # the old version is stopped mid-way (its row stays unended): a redelivery of m1 to the
    # new version finds the cut execution by looking its row up
    old.close()
    assert _other_process(tmp_path, 'print(d.cut_execution("m1"))') == "task-1"
    old_ended = Dedupe(tmp_path, shared=True)
    old_ended.started("m2", "task-2")
    old_ended.flush()
    old_ended.ended("m2")
    assert _other_process(tmp_path, 'print(d.cut_execution("m2"))') == "None"
    old_ended.close()


def test_alone_the_file_is_exclusive_and_cut_executions_are_read_at_start(tmp_path: Path) -> None:
    first = Dedupe(tmp_path)
    first.started("m1", "task-1")
    first.flush()
    first.close()  # stopped with m1 unended
    again = Dedupe(tmp_path)
    assert again.cut_executions() == [("m1", "task-1")]
    assert again._db.execute("PRAGMA locking_mode").fetchone()[0] == "exclusive"
    again.close()
    shared = Dedupe(tmp_path, shared=True)
    assert shared._db.execute("PRAGMA locking_mode").fetchone()[0] == "normal"
    shared.close()
