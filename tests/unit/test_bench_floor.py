"""The durable floors of bench/proxy.py (bench/_trivial.py `durable`, and the same in C,
bench/_floor.c) do the durable work they stand for: when a caller is answered, its
request and the agent's answer are both committed to the floor's SQLite log, whose
connection commits with synchronous=FULL. A baseline that skipped either write would
flatter berth's comparison with it."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

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


def _floor_python(port: int, agent: str, db: Path) -> list[str]:
    return [sys.executable, str(BENCH / "_trivial.py"), "durable", "--port", str(port),
            "--target", agent, "--db", str(db)]  # fmt: skip


def _compiled(tmp: Path) -> Path:
    headers = ("/usr/include/sqlite3.h", "/usr/include/openssl/sha.h")
    if shutil.which("gcc") is None or not all(Path(h).exists() for h in headers):
        why = "the C floor needs gcc, libsqlite3-dev and libssl-dev (scripts/test installs them)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{why} (CI=true: missing is a failure)", pytrace=False)
        pytest.skip(why)
    exe = tmp / "floor"
    cc = ["gcc", "-O2", "-o", str(exe), str(BENCH / "_floor.c")]
    subprocess.run([*cc, "-lsqlite3", "-lpthread", "-lcrypto"], check=True)
    return exe


def _floor_c(port: int, agent: str, db: Path) -> list[str]:
    exe = _compiled(db.parent)
    return [str(exe), str(port), agent.rstrip("/").rsplit(":", 1)[1], str(db)]


@pytest.mark.parametrize("floor", [_floor_python, _floor_c], ids=["python", "c"])
def test_the_durable_floor_has_logged_each_request_and_its_answer_when_it_replies(
    floor: Any, tmp_path: Path
) -> None:
    a, p, db = _port(), _port(), tmp_path / "floor.db"
    agent = f"http://127.0.0.1:{a}/"
    cmd = [sys.executable, str(BENCH / "_trivial.py")]
    procs = [subprocess.Popen([*cmd, "agent", "--port", str(a)])]
    try:
        _up(agent)
        procs.append(subprocess.Popen(floor(p, agent, db)))
        _up(f"http://127.0.0.1:{p}/healthz")
        direct = httpx.post(agent, content=b"{}").content
        bodies = [f'{{"n": {i}}}'.encode() for i in range(5)]
        with httpx.Client() as keep:  # one keep-alive connection, one request after another
            for body in bodies:
                r = keep.post(f"http://127.0.0.1:{p}/", content=body)
                assert r.status_code == 200 and r.content == direct
                # answered: both writes are committed (a reader sees them)
                with sqlite3.connect(db) as c:
                    row = c.execute(
                        "SELECT body, reply FROM log ORDER BY id DESC LIMIT 1"
                    ).fetchone()
                assert row[0] == body and direct in row[1]  # C keeps the answer as it came
        with sqlite3.connect(db) as c:
            assert [r[0] for r in c.execute("SELECT body FROM log ORDER BY id")] == bodies
            assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # its own connection commits with FULL (2): a fsync per commit
        assert httpx.get(f"http://127.0.0.1:{p}/healthz").text == "ok synchronous=2"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def test_the_c_floor_in_berth_rows_writes_berths_rows_with_berths_statements(
    tmp_path: Path,
) -> None:
    """bench/proxy.py's "C floor, berth rows": when a caller is answered, berth's own
    delivery row is there, written by berth's accept (in flight, its messageId, a time-ordered
    id, a fingerprint) and settled by berth's settle (done, the reply), and a reader of
    berth's store reads it as berth would."""
    import asyncio

    from berth.adapters.sql.sqlite import SqliteStore
    from berth.domain.delivery import DeliveryStatus
    from berth.services.proxy_keys import fingerprint

    sys.path.insert(0, str(BENCH))
    try:
        import proxy as bench_proxy
    finally:
        sys.path.remove(str(BENCH))
    exe = _compiled(tmp_path)
    a, p, db = _port(), _port(), tmp_path / "berth.db"
    asyncio.run(bench_proxy._berth_schema(db))
    agent = f"http://127.0.0.1:{a}/"
    procs = [
        subprocess.Popen([sys.executable, str(BENCH / "_trivial.py"), "agent", "--port", str(a)])
    ]
    try:
        _up(agent)
        cmd = [str(exe), str(p), str(a), str(db), bench_proxy.berth_sql(tmp_path)]
        procs.append(subprocess.Popen(cmd))
        _up(f"http://127.0.0.1:{p}/healthz")
        direct = httpx.post(agent, content=b"{}").content
        with httpx.Client() as keep:
            for i in range(3):
                body = f'{{"params": {{"message": {{"messageId": "m-{i}"}}}}}}'.encode()
                r = keep.post(f"http://127.0.0.1:{p}/", content=body)
                assert r.status_code == 200 and r.content == direct

        async def read() -> list[Any]:
            store = SqliteStore(str(db))
            try:
                return [await store.find_delivery("w-bench", f"m-{i}", None) for i in range(3)]
            finally:
                await store.close()

        got = asyncio.run(read())
        assert all(d is not None and d.status is DeliveryStatus.DONE for d in got)
        assert [d.message_id for d in got] == ["m-0", "m-1", "m-2"]
        assert all(direct in (d.reply or b"") for d in got)
        # berth's own fingerprint of each request's params (the C canonical form, hashed)
        params = [{"message": {"messageId": f"m-{i}"}} for i in range(3)]
        assert [d.fingerprint for d in got] == [fingerprint(p) for p in params]
        assert [d.forwards for d in got] == [1, 1, 1] and got[0].id < got[1].id < got[2].id
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
