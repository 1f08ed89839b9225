"""In-flight work, the drain, and the tool gate.

Rules:
- Work is counted by messageId from the moment its request arrives (or its execution
  starts, for background work) until it ends.
- A drain refuses new sends at once and waits until nothing is in flight, or until its
  deadline; it reports what finished meanwhile and what did not.
- The tool gate: while the drain window is open, work in flight keeps passing the gate
  (it is being allowed to finish). When the deadline passes, the gate closes: a tool call
  that has not started waits, so no side effect begins that the coming stop would cut in
  half. `resume()` (or a new process) opens it again.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, ParamSpec, TypeVar

__all__ = ["Drain", "DrainReport", "tool", "tool_gate", "current_drain"]

P = ParamSpec("P")
R = TypeVar("R")
_current: contextvars.ContextVar[Drain | None] = contextvars.ContextVar("berth_drain", default=None)
_process_drain: list[Drain] = []  # the process's drain, for code outside the serving context


@dataclass
class DrainReport:
    drained: bool
    in_flight: int
    completed: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        return {
            "drained": self.drained,
            "in_flight": self.in_flight,
            "completed": self.completed,
            "unfinished": self.unfinished,
        }


class Drain:
    def __init__(self) -> None:
        self._work: Counter[str] = Counter()
        self._idle_waiters: list[asyncio.Future[None]] = []
        self.draining = False
        self.exiting = False  # the drain is the process's own exit (SIGTERM), not berth's ask
        self.generation = 0  # drains asked so far (platform.py: a late "resume" is ignored)
        self.deadline: float | None = None
        self._completed: list[str] = []
        self._gate_open = asyncio.Event()
        self._gate_open.set()
        self._closer: asyncio.TimerHandle | None = None
        _current.set(self)
        _process_drain[:] = [self]

    @property
    def in_flight(self) -> list[str]:
        return sorted(self._work)

    # enter/leave are synchronous on purpose: `leave` runs in `finally` blocks of work that
    # may be being cancelled (a caller hanging up mid-stream), where an await could be cut
    # short and leave the message counted forever.
    def enter(self, message_id: str) -> None:
        self._work[message_id] += 1

    def leave(self, message_id: str) -> None:
        self._work[message_id] -= 1
        if self._work[message_id] <= 0:
            del self._work[message_id]
            if self.draining:
                self._completed.append(message_id)
        if not self._work:
            for f in self._idle_waiters:
                if not f.done():
                    f.set_result(None)
            self._idle_waiters.clear()

    @asynccontextmanager
    async def working(self, message_id: str) -> AsyncIterator[None]:
        self.enter(message_id)
        try:
            yield
        finally:
            self.leave(message_id)

    async def drain(self, seconds: float) -> DrainReport:
        """Refuse new work and wait for in-flight work, at most `seconds` (never a fixed sleep)."""
        loop = asyncio.get_running_loop()
        self.generation += 1  # a heartbeat's answer about an earlier drain no longer holds
        if not self.draining:
            self.draining = True
            self._completed = []
            self.deadline = loop.time() + seconds
            self._closer = loop.call_at(self.deadline, self._gate_open.clear)
        deadline = min(self.deadline or 0.0, loop.time() + seconds)
        if self._work:
            idle: asyncio.Future[None] = loop.create_future()
            self._idle_waiters.append(idle)
            try:
                await asyncio.wait_for(asyncio.shield(idle), max(0.0, deadline - loop.time()))
            except TimeoutError:
                pass
        return DrainReport(not self._work, len(self._work), list(self._completed), self.in_flight)

    def resume(self) -> None:
        self.draining = False
        self.deadline = None
        if self._closer is not None:
            self._closer.cancel()
        self._gate_open.set()

    @asynccontextmanager
    async def gate(self) -> AsyncIterator[None]:
        await self._gate_open.wait()
        yield


def current_drain() -> Drain | None:
    return _current.get() or (_process_drain[0] if _process_drain else None)


@asynccontextmanager
async def tool_gate() -> AsyncIterator[None]:
    """`async with tool_gate(): ...` around a tool call: waits while the gate is closed."""
    d = current_drain()
    if d is None:
        yield
        return
    async with d.gate():
        yield


def tool(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Decorator form of `tool_gate` for async tool functions."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        async with tool_gate():
            return await fn(*args, **kwargs)

    return wrapper
