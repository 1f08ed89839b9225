"""Background loops that cannot silently disappear.

Every loop berth runs for its whole life (dispatch upkeep, waiters, liveness, replica
notifications, housekeeping) runs under a Supervisor: a loop that raises is logged with
its traceback and started again after a backoff; a loop that returns when it should run
forever is logged and started again too. One-shot background work (`once`) is logged if
it fails. Only `close` ends them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("berth.supervisor")
__all__ = ["Supervisor"]

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 60.0  # a loop that ran this long before failing starts its backoff anew


class Supervisor:
    def __init__(self, *, backoff_first: float = BACKOFF_FIRST) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._first = backoff_first
        self.restarts: dict[str, int] = {}  # how often each loop was started again

    def run(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Keep `loop()` running under `name` until `close`."""
        if name in self._tasks:
            raise ValueError(f"a loop named {name!r} runs already")
        self.restarts[name] = 0
        self._tasks[name] = asyncio.create_task(self._keep(name, loop), name=name)

    async def _keep(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        backoff = self._first
        while True:
            started = time.monotonic()
            try:
                await loop()
                log.error("background loop %s stopped by itself; starting it again", name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "background loop %s failed; starting it again in %.1f s", name, backoff
                )
            if time.monotonic() - started > HEALTHY_AFTER:
                backoff = self._first
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            self.restarts[name] += 1

    def once(self, name: str, work: Awaitable[None]) -> None:
        """Run `work` once in the background: a failure is logged, `close` cancels it."""

        async def logged() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task %s failed", name)

        self._tasks[f"{name}#{id(work)}"] = asyncio.create_task(logged(), name=name)

    def running(self) -> list[str]:
        return [n for n, t in self._tasks.items() if not t.done()]

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
