"""Restart with drain: one cycle for every trigger, one at a time per workspace.

A second request while a cycle runs joins it. Pause, resume and crash recovery are the
same cycle with some steps left out, so there is one code path to reason about.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from berth.domain.deploy import DeployFailed, RestartMode
from berth.domain.errors import BerthError, Conflict
from berth.domain.lifecycle import WorkspaceState
from berth.domain.restart import Phase, PhaseTiming, RestartRecord, Trigger
from berth.domain.workspace import Runtime, Workspace
from berth.metrics import Metrics
from berth.ports import Locks, RestartStore
from berth.services.agent_link import AgentLink
from berth.services.deploy import Replacer, check_mode, spec_change
from berth.services.dispatcher import Dispatcher
from berth.services.events import Events
from berth.services.lifecycle import Runner
from berth.services.lifecycle_lock import JOIN_WAIT, LifecycleLock, busy
from berth.services.roster import Roster

log = logging.getLogger("berth.restart")
S = WorkspaceState
__all__ = ["RestartService"]

RESTARTABLE = frozenset({S.ONLINE, S.PROVISIONING, S.OFFLINE, S.FAILED, S.DRAINING})
COUNTED = frozenset({Trigger.API, Trigger.POLICY, Trigger.CONFIG, Trigger.DEPLOY})
# the steps of a stop-first cycle from which on it starts no agent any more
STARTED = frozenset({Phase.STARTING, Phase.REPLAY})


class RestartService:
    def __init__(
        self,
        runner: Runner,
        records: RestartStore,
        roster: Roster,
        dispatcher: Dispatcher,
        link: AgentLink,
        events: Events,
        locks: Locks,
        metrics: Metrics,
        replacer: Replacer,
    ) -> None:
        self._runner, self._records, self._roster = runner, records, roster
        self._replacer = replacer
        self._dispatcher, self._link, self._events = dispatcher, link, events
        self._lock = LifecycleLock(locks)
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()

    # requests -------------------------------------------------------------
    async def request(
        self,
        ws: Workspace,
        *,
        trigger: Trigger,
        reason: str | None = None,
        drain_seconds: float | None = None,
        delay: float = 0.0,
        mode: RestartMode | None = None,
        change: dict[str, Any] | None = None,
    ) -> tuple[RestartRecord, bool]:
        """Start a restart cycle, or join the one running. Returns (record, joined).
        `mode`: stop-first or replace (default: the spec's); `change`: a deploy's new spec
        fields (a deploy never joins: it waits for the running cycle, then runs)."""
        mode = check_mode(ws, mode or ws.restart_mode)
        deadline = time.monotonic() + JOIN_WAIT
        while (token := await self._lock.try_acquire(ws.id)) is None:
            # Someone holds the lock: a restart (maybe on another replica, which records it
            # just after taking the lock) is joined; a pause or removal is waited for.
            active = await self._records.active_restart(ws.id)
            if active is not None and change is None and _joinable(active, trigger):
                return active, True
            if time.monotonic() > deadline:
                raise busy(ws)
            await asyncio.sleep(0.02)
        ws = await self._roster.get(ws.id)
        if ws.state not in RESTARTABLE:
            await self._lock.release(ws.id, token)
            raise Conflict(
                f"workspace {ws.name} is {ws.state.value}; it cannot be restarted",
                code="not_restartable",
            )
        record = RestartRecord(
            id=str(uuid.uuid4()),
            workspace_id=ws.id,
            trigger=trigger,
            reason=reason,
            drain_seconds=ws.drain_seconds if drain_seconds is None else drain_seconds,
            created_at=time.time(),
            mode=mode.value,
        )
        await self._records.save_restart(record)
        self._spawn(self._cycle(ws, record, token, delay, change or {}))
        await self._events.emit(
            "restart.requested",
            workspace_id=ws.id,
            restart_id=record.id,
            trigger=trigger.value,
            reason=reason,
        )
        return record, False

    async def record(self, ws_id: str, restart_id: str) -> RestartRecord:
        return await self._records.get_restart(ws_id, restart_id)

    # the cycle ------------------------------------------------------------
    async def _cycle(
        self, ws: Workspace, r: RestartRecord, token: str, delay: float, change: dict[str, Any]
    ) -> None:
        started = time.monotonic()
        began = ws  # as the cycle found it when it was requested, under its lock
        try:
            async with self._lock.holding(ws.id, token):
                if delay:
                    await asyncio.sleep(delay)
                ws = await self._roster.get(ws.id)
                if _registered_since(began, ws):
                    await self._registered(ws, r, change)
                    return
                running = await self._is_running(ws)
                if r.mode == RestartMode.REPLACE.value and running and ws.state is S.ONLINE:
                    await self._done(ws, r, await self._replacer.run(ws, r, change, self._phase))
                    return
                if change.get("canary") is not None:
                    raise DeployFailed(f"a canary needs {ws.name} online, not {ws.state.value}")
                r.mode = RestartMode.STOP_FIRST.value  # nothing serves: nothing to keep serving
                cut = await self._runner.in_flight(ws)  # what the stop may cut
                if running:
                    await self._drain_and_stop(ws, r)
                else:
                    await self._phase(
                        r, Phase.STOPPING, self._stop_quietly(ws), detail="not running"
                    )
                n = await self._runner.requeue(ws, cut)
                await self._phase(r, Phase.REQUEUE, _noop(), detail=f"{n} returned to the queue")
                ws = await self._roster.get(ws.id)
                ws = await self._next_version(ws, r, change)  # a deploy, stop-first
                now = await self._phase(r, Phase.STARTING, self._runner.start(ws))
                if ws.runtime is Runtime.EXTERNAL:
                    await self._resume_agent(now)
                await self._phase(r, Phase.REPLAY, _noop())
                self._dispatcher.wake(ws.id)
                await self._done(ws, r)
        except Exception as e:
            msg = e.message if isinstance(e, BerthError) else repr(e)
            log.warning("restart %s of %s failed: %s", r.id, ws.name, msg)
            r.error = msg
            await self._finish(r, Phase.FAILED)
            now_ws = self._roster.peek(ws.id)
            if isinstance(e, DeployFailed):  # the old version kept serving
                return
            if now_ws is not None and now_ws.state is not S.REMOVED:
                await self._runner.move(now_ws, S.FAILED, last_error=f"restart failed: {msg}")
        finally:
            self._metrics.inc(
                "berth_restarts_total",
                workspace=ws.name,
                trigger=r.trigger.value,
                result=r.phase.value,
            )
            self._metrics.observe(
                "berth_restart_seconds", time.monotonic() - started, workspace=ws.name
            )

    async def _done(self, ws: Workspace, r: RestartRecord, how: Phase = Phase.DONE) -> None:
        await self._finish(r, how)
        if how is Phase.DONE and r.trigger in COUNTED:
            current = await self._roster.get(ws.id)
            await self._runner.update(ws.id, restart_count=current.restart_count + 1)

    async def _registered(self, ws: Workspace, r: RestartRecord, change: dict[str, Any]) -> None:
        """The cycle of an external workspace whose agent registered after the cycle began
        (an agent registers the moment its workspace is created, or comes back while the
        cycle waits for the lock): that registration is the start the cycle is for. The
        agent is no running instance to drain and stop: it would be told to drain and be
        moved back to provisioning, where an agent that never heartbeats stays."""
        r.mode = RestartMode.STOP_FIRST.value
        ws = await self._next_version(ws, r, change)  # nothing of it runs here yet
        detail = "the agent registered after the cycle began"
        await self._phase(r, Phase.STARTING, self._resume_agent(ws), detail=detail)
        await self._phase(r, Phase.REPLAY, _noop())
        self._dispatcher.wake(ws.id)
        await self._done(ws, r)

    async def _resume_agent(self, ws: Workspace) -> None:
        """Tell an external agent its drain is over, and bring it online on its answer if
        it is still provisioning. Also when it registered during the cycle (`ws` online): a
        registration does not end the drain a pause (or a restart) asked of it, and an
        agent still draining refuses every message (DRAINING) while online, for good. A
        paused agent registers the moment the workspace leaves paused: its heartbeat, on
        any replica, is answered `reregister` then, which can land before the cycle's start
        step, or even before the cycle reads the workspace (CI: a send held across
        replicas was never answered)."""
        if not ws.agent_url or not await self._link.signal_resume(ws):
            return
        if ws.state is S.PROVISIONING:
            await self._runner.move(ws, S.ONLINE, only_from=frozenset({S.PROVISIONING}))

    async def _next_version(
        self, ws: Workspace, r: RestartRecord, change: dict[str, Any]
    ) -> Workspace:
        """A deploy's new spec as the workspace's next version (recorded on `r`); no
        change (a restart): the workspace as it is."""
        if not change:
            return ws
        r.versions = {"from": ws.version, "to": ws.version + 1}
        return await self._runner.update(ws.id, **spec_change(ws, change))

    async def _drain_and_stop(self, ws: Workspace, r: RestartRecord) -> None:
        moved = await self._runner.move(ws, S.DRAINING)
        ws = moved or ws
        t0 = time.monotonic()
        report = await self._phase(
            r,
            Phase.DRAINING,
            self._runner.drain(ws, restart_id=r.id, drain_seconds=r.drain_seconds, reason=r.reason),
        )
        self._metrics.observe("berth_drain_seconds", time.monotonic() - t0, workspace=ws.name)
        r.drain_report = report.public()
        await self._runner.move(ws, S.STOPPING)
        await self._phase(r, Phase.STOPPING, self._runner.stop(ws))

    async def _stop_quietly(self, ws: Workspace) -> None:
        if ws.runtime is not Runtime.EXTERNAL:
            await self._runner.stop(ws, grace=1.0)

    async def _is_running(self, ws: Workspace) -> bool:
        if ws.runtime is Runtime.EXTERNAL:
            return ws.state is S.ONLINE
        p = self._runner.provisioner(ws)
        return p is not None and await p.is_running(ws)

    async def _phase(self, r: RestartRecord, phase: Phase, work, detail: str | None = None):  # type: ignore[no-untyped-def]
        timing = PhaseTiming(phase, time.time(), detail=detail)
        r.phase = phase
        r.phases.append(timing)
        await self._records.save_restart(r)
        await self._events.emit(
            "restart.phase", workspace_id=r.workspace_id, restart_id=r.id, phase=phase.value
        )
        try:
            return await work
        finally:
            timing.ended_at = time.time()
            await self._records.save_restart(r)

    async def abandon(self, ws: Workspace, why: str) -> RestartRecord | None:
        """Close a cycle that can no longer finish (its berth was killed mid-way): FAILED,
        with `why`, so no record stays in a phase forever."""
        r = await self._records.active_restart(ws.id)
        if r is None:
            return None
        r.error = why
        await self._finish(r, Phase.FAILED)
        return r

    async def _finish(self, r: RestartRecord, phase: Phase) -> None:
        r.phase, r.finished_at = phase, time.time()
        await self._records.save_restart(r)
        await self._events.emit(
            "restart.finished",
            workspace_id=r.workspace_id,
            restart_id=r.id,
            phase=phase.value,
            error=r.error,
            drain_report=r.drain_report,
        )

    # pause, resume, stop --------------------------------------------------
    @asynccontextmanager
    async def exclusive(self, ws: Workspace) -> AsyncIterator[None]:
        """Hold the workspace's lifecycle lock for an operation that is not a restart."""
        token = await self._lock.acquire(ws, JOIN_WAIT)
        async with self._lock.holding(ws.id, token):
            yield

    async def drain_and_stop(
        self, ws: Workspace, final: WorkspaceState, reason: str
    ) -> dict[str, object] | None:
        """Drain and stop a running workspace, leaving it in `final` (paused, offline, removed)."""
        report = None
        if await self._is_running(ws):
            ws = await self._runner.move(ws, S.DRAINING) or ws
            rep = await self._runner.drain(
                ws,
                restart_id=f"{final.value}-{uuid.uuid4()}",
                drain_seconds=ws.drain_seconds,
                reason=reason,
            )
            report = rep.public()
            ws = await self._runner.move(ws, S.STOPPING) or ws
            await self._runner.stop(ws)
        elif ws.runtime is not Runtime.EXTERNAL:
            await self._runner.stop(ws, grace=1.0)
        await self._runner.requeue(ws, set())
        if final is not S.REMOVED:
            await self._runner.move(ws, final)
        return report

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _noop() -> None:
    return None


def _joinable(active: RestartRecord, trigger: Trigger) -> bool:
    """May a request join the cycle running? A crash's may not once that cycle (stop-first)
    is starting or has started its agent: the agent that crashed is the one it started, and
    the cycle ends without starting another, so a joined crash would leave the workspace
    offline with nothing left to start it. Such a request waits for the cycle, then runs."""
    return not (
        trigger is Trigger.POLICY
        and active.mode == RestartMode.STOP_FIRST.value
        and active.phase in STARTED
    )


def _registered_since(began: Workspace, now: Workspace) -> bool:
    """An external workspace that was not online when its cycle began and is now: its agent
    registered since (an external workspace is online only by its agent's registration)."""
    return now.runtime is Runtime.EXTERNAL and began.state is not S.ONLINE and now.state is S.ONLINE
