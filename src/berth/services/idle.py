"""Idle suspend and wake on message: what lets one server hold more workspaces than it
can run at once.

A workspace with `idle_suspend_seconds` is drained and stopped after that long without a
message (state `suspended`). A message to a suspended workspace is accepted into the log
like any other, and its arrival wakes the workspace: suspended -> offline, then the
ordinary restart cycle starts it and the dispatcher delivers what waited, exactly as
after a restart. Nothing is lost in between: the message is in the log before the wake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from berth.domain.errors import StoreUnavailable
from berth.domain.lifecycle import WorkspaceState
from berth.domain.restart import Trigger
from berth.domain.workspace import Workspace
from berth.services.delivery_log import DeliveryLog
from berth.services.lifecycle import Runner
from berth.services.restart import RestartService
from berth.services.roster import Roster

log = logging.getLogger("berth.idle")
S = WorkspaceState
__all__ = ["Idle"]


class Idle:
    def __init__(
        self,
        deliveries: DeliveryLog,
        roster: Roster,
        runner: Runner,
        restarts: RestartService,
        *,
        owner: str,
    ) -> None:
        self._log, self._roster, self._runner, self._restarts = deliveries, roster, runner, restarts
        self._owner = owner
        self._active: dict[str, float] = {}  # ws id -> last time a message came or went
        self._waking: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        deliveries.on_work(self.touch)

    def touch(self, ws_id: str) -> None:
        """A message arrived for the workspace (or went back to its queue)."""
        self._active[ws_id] = time.monotonic()
        ws = self._roster.peek(ws_id)
        # only its owner wakes it (the agent and its state dir live there); the owner hears
        # of work accepted elsewhere over the bus, or finds it queued in `watch`
        if ws is not None and ws.state is S.SUSPENDED and ws.owner in (None, self._owner):
            self.wake(ws)

    def wake(self, ws: Workspace) -> None:
        if ws.id in self._waking:
            return
        self._waking.add(ws.id)
        task = asyncio.ensure_future(self._wake(ws.id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wake(self, ws_id: str) -> None:
        try:
            ws = await self._runner.move(
                await self._roster.get(ws_id), S.OFFLINE, only_from=frozenset({S.SUSPENDED})
            )
            if ws is None:
                return  # woken already (another replica) or no longer suspended
            log.info("waking %s: a message arrived", ws.name)
            await self._restarts.request(ws, trigger=Trigger.WAKE, reason="a message arrived")
        except Exception:
            log.exception("waking %s failed", ws_id)
        finally:
            self._waking.discard(ws_id)

    async def watch(self, period: float) -> None:
        """Suspend the idle ones, wake suspended ones with work (a loop, every `period` s)."""
        while True:
            await asyncio.sleep(period)
            for ws in self._roster.all():
                idle = ws.idle_suspend_seconds
                if idle is None or ws.owner not in (None, self._owner):
                    continue
                if ws.state is S.SUSPENDED:
                    with contextlib.suppress(StoreUnavailable):  # next period, then
                        if (await self._log.backlog(ws.id)).queued:
                            self.wake(ws)  # work whose announcement did not reach us
                    continue
                if ws.state is not S.ONLINE:
                    self._active.pop(ws.id, None)  # counts anew once it is back online
                    continue
                since = self._active.setdefault(ws.id, time.monotonic())
                if time.monotonic() - since >= idle:
                    await self.suspend(ws, idle)

    async def suspend(self, ws: Workspace, idle: float) -> None:
        b = await self._log.backlog(ws.id)
        if b.queued or b.in_flight:
            self._active[ws.id] = time.monotonic()
            return
        try:
            async with self._restarts.exclusive(ws):
                current = await self._roster.get(ws.id)
                if current.state is not S.ONLINE:
                    return
                log.info("suspending %s: no message for %g s", ws.name, idle)
                await self._restarts.drain_and_stop(
                    current, S.SUSPENDED, f"idle for {idle:g} s: suspending"
                )
        except Exception:
            log.exception("suspending %s failed", ws.name)
            return
        # a message that came while it was being suspended waits in the queue: wake for it
        if (await self._log.backlog(ws.id)).queued:
            now = self._roster.peek(ws.id)
            if now is not None and now.state is S.SUSPENDED:
                self.wake(now)

    async def recover(self) -> None:
        """On start: wake suspended workspaces that have messages waiting."""
        backlogs = await self._log.backlogs()
        for ws in self._roster.all():
            if ws.state is S.SUSPENDED and ws.owner in (None, self._owner):
                b = backlogs.get(ws.id)
                if b is not None and b.queued:
                    self.wake(ws)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
