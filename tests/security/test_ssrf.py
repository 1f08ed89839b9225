"""Agent URL policy against a listener on the metadata address (issue 10, SSRF).

Runs berth in a network namespace this test makes (`unshare -n`, as root), where
169.254.169.254 sits on the namespace's own loopback: nothing leaves the machine, and a
listener there must receive nothing from berth (it counts a control connection made at
the end, so a broken listener cannot pass the test)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _need_root() -> None:
    missing = os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail("the SSRF test needs root, unshare and ip (a network namespace)")
        pytest.skip("needs root, unshare and ip to make a network namespace")


def test_berth_never_contacts_a_metadata_address(tmp_path: Path) -> None:
    _need_root()
    script = (
        "ip link set lo up && ip addr add 169.254.169.254/32 dev lo && "
        f'exec "{sys.executable}" -m tests.security.ssrf_probe "{tmp_path / "berth"}"'
    )
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["create"] == [[400, "agent_url_refused"]] * 4, report
    assert report["register"] == [[400, "agent_url_refused"]] * 2, report
    assert report["redirector_registered"] == 200
    assert report["redirect_send"] == 200  # answered (berth's own error), not followed
    assert report["redirect_delivery"] == "dead"
    assert report["hits_during"] == 0, report
    assert report["hits_control"] == 1, report
