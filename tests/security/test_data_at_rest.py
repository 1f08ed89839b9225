"""Data at rest (issue 10): the data directory is 0700 and every file in it 0600; a process
agent gets a minimal environment and, berth running as root, runs as an unprivileged user
that cannot read berth's database, admin token or environment."""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import BerthServer, create, send
from tests.security.conftest import ALLOWED_AGENT_ENV

pytestmark = pytest.mark.slow

PROBE = r"""
for f in "$PROBE_DATA/admin_token" "$PROBE_DATA/berth.db" "$PROBE_DATA/berth.db-wal" \
         "/proc/$PROBE_BERTH_PID/environ"; do
  if cat "$f" > /dev/null 2>&1; then echo "READ $f"; else echo "DENIED $f"; fi
done
if ls "$PROBE_DATA" > /dev/null 2>&1; then echo "LISTED data"; else echo "DENIED listing"; fi
echo "UID $(id -u)"
echo "ENVKEYS $(env | cut -d= -f1 | sort | tr '\n' ' ')"
echo "PROBE DONE"
exec sleep 120
"""


def _modes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


async def test_every_data_file_is_private(tmp_path: Path) -> None:
    data = tmp_path / "berth"
    server = BerthServer(data).start()
    try:
        async with server.client() as c:
            await create(c, "files")  # an agent with its SDK state, a delivery in the log
            r = await send(c, "files", "hi", "m-1")
            assert r.status_code == 200
        modes = _modes(data)
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert "berth.db" in modes and "berth.db-wal" in modes
        wrong = {
            p: oct(m)
            for p, m in modes.items()
            if (m != 0o700 if (data / p).is_dir() else m != 0o600)
        }
        assert wrong == {}, wrong  # berth's files and the SDK's (dedupe, tasks) alike
    finally:
        server.stop()
        server.kill9()


async def test_a_process_agent_cannot_read_the_admin_token(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("this test needs root (berth drops process agents to berth-agent)")
        pytest.skip("berth drops process agents to an unprivileged user only as root")
    data = tmp_path / "berth"
    agents = Path(tempfile.mkdtemp(prefix="berth-agents-", dir="/tmp"))  # reachable by others
    os.chmod(agents, 0o711)
    # no BERTH_ADMIN_TOKEN: berth makes <data dir>/admin_token itself
    server = BerthServer(data, env={"BERTH_AGENT_DIR": str(agents), "BERTH_ADMIN_TOKEN": ""})
    server.env.pop("BERTH_AGENT_USER")  # the default: berth-agent
    server.start()
    try:
        token = (data / "admin_token").read_text().strip()
        async with httpx.AsyncClient(
            base_url=server.url, headers={"authorization": f"Bearer {token}"}, timeout=60
        ) as c:
            spec = {
                "name": "probe",
                "command": ["/bin/sh", "-c", PROBE],
                "env": {"PROBE_DATA": str(data), "PROBE_BERTH_PID": str(server.proc.pid)},
                "restart_policy": "never",
                "drain_seconds": 0,
            }
            assert (await c.post("/v1/workspaces", json=spec)).status_code == 201
            text = ""
            for _ in range(100):
                text = (await c.get("/v1/workspaces/probe/logs")).text
                if "PROBE DONE" in text.splitlines():
                    break
                await asyncio.sleep(0.2)
            assert "PROBE DONE" in text.splitlines(), text
            for what in ("admin_token", "berth.db", "berth.db-wal", "environ"):
                assert any(
                    line.startswith("DENIED") and line.endswith(what) for line in text.splitlines()
                ), text
            lines = text.splitlines()
            assert not [x for x in lines if x.startswith(("READ ", "LISTED"))], text
            assert "DENIED listing" in lines
            uid = int(next(line for line in text.splitlines() if line.startswith("UID "))[4:])
            assert uid != 0
            keys = set(
                next(line for line in text.splitlines() if line.startswith("ENVKEYS"))[8:].split()
            )
            assert "BERTH_ADMIN_TOKEN" not in keys and "BERTH_WORKSPACE_TOKEN" in keys
            assert keys - {"PROBE_DATA", "PROBE_BERTH_PID"} <= ALLOWED_AGENT_ENV, keys
    finally:
        server.stop()
        server.kill9()
