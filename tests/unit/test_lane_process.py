"""The lane's supervisor, over a stand-in lane (a Python script): it gets berth's
listening sockets and its settings, its feed is applied line by line, its standard error
logged; a crash gives its leases back and starts it again; a stop is a SIGTERM, a SIGKILL
past the grace, then its leases given back."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from berth.lane import LaneProcess

FAKE = textwrap.dedent(
    """
    import json, os, signal, socket, sys, time
    out = os.environ["FAKE_OUT"]
    fds = [int(f) for f in os.environ["BERTH_LANE_LISTEN_FDS"].split(",")]
    names = [socket.socket(fileno=f).getsockname()[1] for f in fds]
    env = {k: v for k, v in os.environ.items() if k.startswith(("BERTH", "FAKE", "SECRET"))}
    with open(out, "a") as f:
        f.write(json.dumps({"env": env, "ports": names}) + "\\n")
    mode = os.environ["FAKE_MODE"]
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdout.write('{"e":"ready"}\\n')
    sys.stdout.write('{"e":"f","id":"d1"' + ',"ws":"w"}\\n' + "not json\\n" + '{"e":"x"}')
    sys.stdout.flush()
    print("hello from the lane", file=sys.stderr, flush=True)
    if mode == "crash":
        time.sleep(0.1)
        sys.exit(3)
    time.sleep(60)
    """
)


class Feed:
    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.on_ready = lambda: None

    async def apply_many(self, lines: list[bytes]) -> None:
        for line in lines:
            self.lines.append(line)
            if line == b'{"e":"ready"}':
                self.on_ready()


class Exits:
    def __init__(self) -> None:
        self.n = 0

    async def __call__(self) -> None:
        self.n += 1


def fake_lane(tmp_path: Path) -> Path:
    exe = tmp_path / "fake-lane"
    exe.write_text(f"#!{sys.executable}\n{FAKE}")
    exe.chmod(0o755)
    return exe


def listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def lane(
    tmp_path: Path, mode: str, feed: Feed, exits: Exits, **kw: float
) -> tuple[LaneProcess, socket.socket, Path]:
    out = tmp_path / "runs.jsonl"
    s = listening()
    env = {"FAKE_OUT": str(out), "FAKE_MODE": mode, "BERTH_LANE_OWNER": "r1:lane"}
    p = LaneProcess(fake_lane(tmp_path), [s], env, feed, exits, grace=0.2, **kw)  # type: ignore[arg-type]
    return p, s, out


def runs(out: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []


async def until(cond: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_the_lane_gets_the_sockets_and_settings_and_its_feed_is_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed, exits = Feed(), Exits()
    p, s, out = lane(tmp_path, "serve", feed, exits)
    fd, port = s.fileno(), s.getsockname()[1]
    os.environ["SECRET_OF_BERTH"] = "must-not-leak"
    try:
        with caplog.at_level(logging.INFO, logger="berth.lane"):
            await p.start()
            await asyncio.wait_for(p.ready.wait(), 5)
            await until(lambda: len(feed.lines) == 3 and "hello from" in caplog.text)
    finally:
        del os.environ["SECRET_OF_BERTH"]
        await p.stop()
        s.close()
    (run,) = runs(out)
    assert run["ports"] == [port]  # berth's listening socket, inherited
    env = run["env"]
    assert isinstance(env, dict)
    assert env["BERTH_LANE_LISTEN_FDS"] == str(fd)
    assert env["BERTH_LANE_OWNER"] == "r1:lane" and "SECRET_OF_BERTH" not in env
    assert feed.lines == [
        b'{"e":"ready"}',
        b'{"e":"f","id":"d1","ws":"w"}',
        b"not json",
        b'{"e":"x"}',  # the last line, without its newline: applied at the lane's exit
    ]
    assert "fast lane serving on 127.0.0.1:" in caplog.text
    assert "lane: hello from the lane" in caplog.text
    assert exits.n == 1 and p.starts == 1  # the stop gave its leases back


async def test_a_crashed_lane_gives_its_leases_back_and_starts_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed, exits = Feed(), Exits()
    p, s, out = lane(tmp_path, "crash", feed, exits, restart_after=0.1)
    with caplog.at_level(logging.ERROR, logger="berth.lane"):
        await p.start()
        try:
            await until(lambda: len(runs(out)) >= 2 and exits.n >= 1)
        finally:
            await p.stop()
            s.close()
    assert "fast lane exited (exit code 3)" in caplog.text
    assert len(runs(out)) >= 2


async def test_a_lane_that_ignores_sigterm_is_killed_past_the_grace(tmp_path: Path) -> None:
    feed, exits = Feed(), Exits()
    p, s, _ = lane(tmp_path, "stubborn", feed, exits, kill_after=0.3)
    await p.start()
    await asyncio.wait_for(p.ready.wait(), 5)
    pid = p.pid
    assert pid is not None
    loop = asyncio.get_running_loop()
    started = loop.time()
    await p.stop()
    s.close()
    assert 0.4 <= loop.time() - started < 3  # grace 0.2 + 0.3, then SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert exits.n == 1


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:  # a timeout: the connection waits in a backlog
        return False
    return False


@pytest.mark.parametrize("mode", ["serve", "crash"])
async def test_once_stopped_new_connections_are_refused_and_the_lane_stays_stopped(
    tmp_path: Path, mode: str
) -> None:
    feed, exits = Feed(), Exits()
    p, s, out = lane(tmp_path, mode, feed, exits, restart_after=0.05)
    port = s.getsockname()[1]
    try:
        await p.start()
        await asyncio.wait_for(p.ready.wait(), 5)
        if mode == "crash":  # stopped between its runs
            await until(lambda: exits.n >= 1)
        await p.stop()
        starts = p.starts
        assert refused(port)  # berth's copy closed too: refused, not left in a backlog
        await asyncio.sleep(0.3)
        assert p.starts == starts and len(runs(out)) == starts  # not started again
    finally:
        await p.stop()
        s.close()
    with pytest.raises(RuntimeError):
        await p.start()


async def test_settings_read_before_each_start_reach_that_start(tmp_path: Path) -> None:
    """`prepare` is read again before each start (the PostgreSQL lane's database check): a
    value that could not be read at one start is there at the next."""
    feed, exits = Feed(), Exits()
    reads: list[int] = []

    async def prepare() -> dict[str, str]:
        reads.append(1)
        return {} if len(reads) == 1 else {"BERTH_LANE_PG_EXPECT": f"db-{len(reads)}"}

    p, s, out = lane(tmp_path, "crash", feed, exits, restart_after=0.1, prepare=prepare)  # type: ignore[arg-type]
    try:
        await p.start()
        await until(lambda: len(runs(out)) >= 3)
    finally:
        await p.stop()
        s.close()
    got = [r["env"].get("BERTH_LANE_PG_EXPECT") for r in runs(out)[:3]]  # type: ignore[union-attr]
    assert got == [None, "db-2", "db-3"]
