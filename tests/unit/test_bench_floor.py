"""The durable floor of bench/proxy.py (bench/_trivial.py `durable`) does the durable work
it stands for: when a caller is answered, its request and the agent's answer are both
committed to the floor's SQLite log, whose connection commits with synchronous=FULL. A
baseline that skipped either write would flatter berth's comparison with it."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _up(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not come up")


def test_the_durable_floor_has_logged_each_request_and_its_answer_when_it_replies(
    tmp_path: Path,
) -> None:
    a, p, db = _port(), _port(), tmp_path / "floor.db"
    agent = f"http://127.0.0.1:{a}/"
    cmd = [sys.executable, str(BENCH / "_trivial.py")]
    procs = [subprocess.Popen([*cmd, "agent", "--port", str(a)])]
    try:
        _up(agent)
        floor = [*cmd, "durable", "--port", str(p), "--target", agent, "--db", str(db)]
        procs.append(subprocess.Popen(floor))
        _up(f"http://127.0.0.1:{p}/healthz")
        direct = httpx.post(agent, content=b"{}").content
        bodies = [f'{{"n": {i}}}'.encode() for i in range(5)]
        for body in bodies:
            r = httpx.post(f"http://127.0.0.1:{p}/", content=body)
            assert r.status_code == 200 and r.content == direct
            # answered: both writes are committed (a reader sees them)
            with sqlite3.connect(db) as c:
                row = c.execute("SELECT body, reply FROM log ORDER BY id DESC LIMIT 1").fetchone()
            assert row == (body, direct)
        with sqlite3.connect(db) as c:
            assert [r[0] for r in c.execute("SELECT body FROM log ORDER BY id")] == bodies
            assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # its own connection commits with FULL (2): a fsync per commit
        assert httpx.get(f"http://127.0.0.1:{p}/healthz").text == "ok synchronous=2"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
