"""The lane's process: started with berth's listening sockets inherited, its feed read
from its standard output, its standard error logged, and started again after a crash."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from berth.lane.feed import LaneFeed

log = logging.getLogger("berth.lane")
__all__ = ["LaneProcess"]

# seconds between a crash of the lane and its next start (meanwhile connections wait in
# the listen backlog of berth's sockets: none is refused)
RESTART_AFTER = 0.2
KILL_AFTER = 5.0  # seconds past the shutdown grace before a SIGTERM becomes a SIGKILL
CHUNK = 1 << 16
# what the lane inherits of berth's environment (never berth's secrets)
INHERITED = (
    "PATH",
    "LD_LIBRARY_PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "BERTH_LANE_PG_WRITERS",
    "BERTH_LANE_PG_LINGER",
    # what asyncpg and libpq both read to connect: the lane reaches berth's database as
    # berth does (the password too, where it is given this way)
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGDATABASE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLCRL",
    "PGTARGETSESSIONATTRS",
)


class LaneProcess:
    def __init__(
        self,
        exe: Path,
        listen: Sequence[socket.socket],
        env: Mapping[str, str],
        feed: LaneFeed,
        on_exit: Callable[[], Awaitable[None]],
        *,
        grace: float,
        restart_after: float = RESTART_AFTER,
        kill_after: float = KILL_AFTER,
        prepare: Callable[[], Awaitable[Mapping[str, str]]] | None = None,
    ) -> None:
        """`prepare`: settings read again before each start of the lane (added to `env`)."""
        self._prepare = prepare
        self._exe, self._listen, self._feed, self._on_exit = exe, list(listen), feed, on_exit
        fds = ",".join(str(s.fileno()) for s in self._listen)
        inherited = {k: os.environ[k] for k in INHERITED if k in os.environ}
        self._env = {**inherited, **env, "BERTH_LANE_LISTEN_FDS": fds}
        self._grace, self._restart_after, self._kill_after = grace, restart_after, kill_after
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.starts = 0
        self.ready = asyncio.Event()
        feed.on_ready = self._ready

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    async def start(self) -> None:
        if any(s.fileno() < 0 for s in self._listen):
            raise RuntimeError("the fast lane was stopped: its listening sockets are closed")
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="fast-lane")

    async def stop(self) -> None:
        """SIGTERM (the lane finishes its forwards for up to the shutdown grace), SIGKILL
        past it, then the lane's leases given back. Berth's copies of the public sockets are
        closed at once (the lane closes its own on SIGTERM), so a new connection is refused
        while berth stops rather than left waiting in the backlog; the lane is not started
        again. Safe to call twice."""
        if self._task is None:
            return
        self._stopping = True
        task, self._task = self._task, None
        proc = self._proc
        running = proc is not None and proc.returncode is None
        if proc is not None and running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for s in self._listen:
            s.close()
        if proc is not None and running:
            stop_in = self._grace + self._kill_after
            done, _ = await asyncio.wait({task}, timeout=stop_in)
            if not done:
                log.warning("fast lane did not stop in %g s: killed", stop_in)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.wait({task}, timeout=self._kill_after)  # reaped
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await self._on_exit()

    def _ready(self) -> None:
        if self._stopping:  # its sockets are closed: it serves no more
            return
        where = ", ".join(_address(s) for s in self._listen)
        log.info("fast lane serving on %s", where)
        self.ready.set()

    async def _run(self) -> None:
        while not self._stopping:
            code = await self._once()
            if self._stopping:
                return
            log.error(
                "fast lane exited (%s); its deliveries go back to the queue; starting it "
                "again in %g s",
                code,
                self._restart_after,
            )
            self.ready.clear()
            try:
                await self._on_exit()
            except Exception:  # never the end of the restarts
                log.exception("fast lane: handling its exit failed")
            await asyncio.sleep(self._restart_after)

    async def _once(self) -> str:
        """One run of the lane, to its exit: how it ended."""
        if self._stopping:  # its sockets are closed
            return "stopped"
        env = self._env
        if self._prepare is not None:
            try:
                env = {**env, **await self._prepare()}
            except Exception:  # a bug: the lane starts with what it has
                log.exception("fast lane: reading its settings failed")
        try:
            proc = await asyncio.create_subprocess_exec(
                str(self._exe),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=[s.fileno() for s in self._listen],
                env=env,
            )
        except OSError as e:
            return f"could not start {self._exe}: {e}"
        self._proc = proc
        self.starts += 1
        assert proc.stdout is not None and proc.stderr is not None
        readers = asyncio.gather(self._read_feed(proc.stdout), _log_lines(proc.stderr))
        try:
            await proc.wait()
            await readers
        except Exception:  # a bug in reading: the lane's exit is still handled as one
            log.exception("fast lane: reading its output failed")
        finally:
            readers.cancel()
            readers.add_done_callback(_retrieved)
        code = await proc.wait()
        return f"exit code {code}" if code >= 0 else f"signal {-code}"

    async def _read_feed(self, out: asyncio.StreamReader) -> None:
        async for lines in _batches(out):
            await self._feed.apply_many(lines)


async def _log_lines(err: asyncio.StreamReader) -> None:
    async for line in _lines(err):
        text = line.decode(errors="replace").rstrip()
        log.info("%s", text if text.startswith("lane: ") else f"lane: {text}")


async def _lines(out: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Non-empty lines, read in chunks (any length)."""
    async for lines in _batches(out):
        for line in lines:
            yield line


async def _batches(out: asyncio.StreamReader) -> AsyncIterator[list[bytes]]:
    """The non-empty lines each read brought, as a list (the feed has thousands a second,
    written in batches: one list per batch, applied at once)."""
    rest = b""
    while chunk := await out.read(CHUNK):
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        if got := [line for line in lines if line]:
            yield got
    if rest:
        yield [rest]


def _retrieved(f: asyncio.Future[Any]) -> None:
    """Readers cut by a stop: what they ended with is known, not an unretrieved error."""
    if not f.cancelled():
        f.exception()


def _address(s: socket.socket) -> str:
    host, port = s.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
