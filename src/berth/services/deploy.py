"""Replace: start the next version beside the serving one, switch, drain the old, stop it.

The workspace stays `online` throughout (no state move): the record always describes the
serving version, and its `peer` the other running instance. New claims go where the record
points, so the switch is one update; with `max_concurrency` 1 the store's claim counts the
old version's in-flight delivery, so the next message waits for it (FIFO is kept).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from berth.domain.deploy import CANARY_SECONDS, DeployFailed, Instance, RestartMode, Role
from berth.domain.errors import BerthError, Conflict
from berth.domain.lifecycle import WorkspaceState
from berth.domain.restart import Phase, RestartRecord
from berth.domain.workspace import Runtime, Workspace
from berth.ports import RunInfo
from berth.services.agent_link import AgentLink, SignalOutcome
from berth.services.canary import Canary
from berth.services.dispatcher import Dispatcher
from berth.services.events import WS_TOPIC, Events
from berth.services.lifecycle import DrainReport, Runner, hash_token, new_token
from berth.services.roster import Roster

log = logging.getLogger("berth.deploy")
S = WorkspaceState
__all__ = ["SPEC_FIELDS", "DeployFailed", "Replacer", "check_mode", "spec_change"]

SPEC_FIELDS = ("command", "image", "env")  # what a deploy may change in the running spec
PhaseFn = Callable[..., Awaitable[Any]]


class Replacer:
    def __init__(
        self,
        runner: Runner,
        link: AgentLink,
        dispatcher: Dispatcher,
        roster: Roster,
        events: Events,
        canary: Canary,
    ) -> None:
        self._runner, self._link, self._dispatcher = runner, link, dispatcher
        self._roster, self._events, self._canary = roster, events, canary

    async def run(
        self, ws: Workspace, r: RestartRecord, change: dict[str, Any], phase: PhaseFn
    ) -> Phase:
        """The replace cycle, each step recorded through `phase(record, Phase, work, detail)`;
        returns how it ended (DONE, or ROLLED_BACK after a canary that was not promoted)."""
        version = ws.version + 1
        r.versions = {"from": ws.version, "to": version}
        info = await phase(
            r, Phase.STARTING, self._start_next(ws, version, change), detail=f"version {version}"
        )
        if change.get("canary") is not None:
            percent, seconds = change["canary"], change.get("canary_seconds", CANARY_SECONDS)
            r.versions["canary"] = {"percent": percent, "seconds": seconds}
            decision = await phase(
                r,
                Phase.CANARY,
                self._canary.window(ws.id, percent, seconds, r),
                detail=f"{percent} % of new messages for {seconds:g} s",
            )
            if decision == "rollback":
                await phase(r, Phase.ROLLBACK, self._rollback(ws.id, version, r))
                return Phase.ROLLED_BACK
        old = await phase(r, Phase.SWITCH, self._switch(ws.id, version, info, change))
        report = await phase(r, Phase.DRAINING, self._drain(ws.id, old, r))
        r.drain_report = report.public()
        await phase(r, Phase.STOPPING, self._stop(ws.id, old), detail=f"version {old.version}")
        now = await self._roster.get(ws.id)
        if now.state is S.OFFLINE:  # it crashed while the old one drained; the policy's
            # restart joined this cycle, so this cycle starts it
            await phase(r, Phase.STARTING, self._runner.start(now), detail="after a crash")
        return Phase.DONE

    async def _rollback(self, ws_id: str, version: int, r: RestartRecord) -> None:
        """A deploy back: the new version takes no more new messages, drains and stops."""
        ws = await self._roster.get(ws_id)
        peer = ws.peer_copy()
        if peer is None or peer.version != version:
            return
        peer.canary = None
        await self._runner.update(ws_id, peer=peer, tell=True)
        self._dispatcher.retire(ws_id, peer.run_token_hash)
        r.drain_report = (await self._drain(ws_id, peer, r)).public()
        await self._stop(ws_id, peer)

    # steps ------------------------------------------------------------------
    async def _start_next(self, ws: Workspace, version: int, change: dict[str, Any]) -> RunInfo:
        p = self._runner.provisioner(ws)
        if p is None:
            raise DeployFailed("an external workspace has no instance berth can start")
        token = new_token()
        spec = {k: change.get(k, getattr(ws, k)) for k in SPEC_FIELDS}
        peer = Instance(version, Role.NEXT, hash_token(token), **spec, started_at=time.time())
        ws = await self._runner.update(
            ws.id, peer=peer, peer_run_token_hash=peer.run_token_hash, tell=True
        )
        # the next version as itself: none of the serving version's pid, url or card (a
        # stop of this view whose process is gone must not find the serving one by its pid)
        nxt = ws.as_instance(peer)
        exited = self._runner.expect_peer_exit(ws.id, version)
        registered = asyncio.ensure_future(
            self._roster.wait_for(ws.id, lambda w: _settled(w, version), self._runner.start_timeout)
        )
        try:
            info = await p.start(nxt, self._runner.identity(nxt, token, shared=True))
            done, _ = await asyncio.wait(
                {registered, exited},  # type: ignore[type-var]
                return_when=asyncio.FIRST_COMPLETED,
            )
            if exited in done:
                raise DeployFailed(
                    f"version {version} exited with code {exited.result()} before registering"
                )
            now = self._roster.peek(ws.id)
            if now is None or now.peer is None or now.peer.agent_url is None:
                raise DeployFailed(
                    f"version {version} did not register within {self._runner.start_timeout:g} s"
                )
            return info
        except BerthError as e:
            await self._abandon(nxt, e)
            raise DeployFailed(e.message) from e
        except Exception as e:
            log.exception("starting version %d of %s failed", version, ws.name)
            await self._abandon(nxt, e)
            raise DeployFailed(f"could not start version {version}: {e}") from e
        finally:
            registered.cancel()
            self._runner.peer_exited(ws.id, version, None)  # drop the waiter

    async def _abandon(self, nxt: Workspace, why: Exception) -> None:
        """Stop a next version that failed to come up; the serving one is untouched."""
        p = self._runner.provisioner(nxt)
        try:
            if p is not None:
                await p.stop(nxt, 1.0)
        finally:
            await self._runner.update(nxt.id, peer=None, peer_run_token_hash=None, tell=True)
        log.warning("deploy of %s version %d abandoned: %s", nxt.name, nxt.version, why)

    async def _switch(
        self, ws_id: str, version: int, info: RunInfo, change: dict[str, Any]
    ) -> Instance:
        """One update: the record becomes the next version; the old one becomes the peer."""
        ws = await self._roster.get(ws_id)
        nxt = ws.peer
        if nxt is None or nxt.version != version:
            raise DeployFailed(f"version {version} is gone")
        old = ws.instance(Role.OLD)
        limits = dict(ws.limits)
        if change.get("restart_mode") is not None:
            limits["restart_mode"] = change["restart_mode"].value
        self._dispatcher.retire(ws_id, ws.run_token_hash)
        ws = await self._runner.update(
            ws_id,
            **{**nxt.record(), "pid": info.pid},  # its pid is known from its start only
            limits=limits,
            state_dir=info.state_dir or ws.state_dir,
            last_heartbeat=time.time(),
            peer=old,
            peer_run_token_hash=old.run_token_hash,
        )
        await self._link.remember(ws)
        if ws.state is S.OFFLINE:  # the old version crashed while this one started: this
            # one is registered and serving now (offline -> provisioning -> online)
            ws = await self._runner.move(ws, S.PROVISIONING, only_from=frozenset({S.OFFLINE})) or ws
            await self._runner.move(ws, S.ONLINE, only_from=frozenset({S.PROVISIONING}))
        await self._events.signal(WS_TOPIC, workspace_id=ws_id)
        await self._events.emit(
            "workspace.switched", workspace_id=ws_id, name=ws.name, version=version
        )
        self._dispatcher.wake(ws_id)
        return old

    async def _drain(self, ws_id: str, old: Instance, r: RestartRecord) -> DrainReport:
        """`restart_pending` to the instance `old`; then wait for berth's forwards to it."""
        ws = await self._roster.get(ws_id)
        view = ws.as_instance(old)
        before = set(self._dispatcher.in_flight_to(ws_id, old.run_token_hash))
        res = await self._link.signal_restart(
            view,
            restart_id=r.id,
            drain_seconds=r.drain_seconds,
            reason=r.reason,
            url=old.agent_url,
        )
        if res.outcome is SignalOutcome.DRAINED:
            report = DrainReport.of_agent(res.report)
        else:  # no drain of its own (or unreachable): berth waits for what it forwards
            report = DrainReport("berth", False, detail=f"{res.outcome.value}: {res.detail}")
        deadline = time.monotonic() + (0.5 if report.mode == "agent" else r.drain_seconds)
        while self._dispatcher.in_flight_to(ws_id, old.run_token_hash):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        left = set(self._dispatcher.in_flight_to(ws_id, old.run_token_hash))
        report.in_flight = len(left)
        report.drained = report.drained or not left
        if report.mode == "berth":
            ids = await self._runner.message_ids(before | left)
            report.completed = sorted(ids[i] for i in before - left if i in ids)
            report.unfinished = sorted(ids[i] for i in left if i in ids)
        return report

    async def _stop(self, ws_id: str, old: Instance) -> None:
        ws = await self._roster.get(ws_id)
        view = ws.as_instance(old)
        try:
            p = self._runner.provisioner(view)
            if p is not None:
                await p.stop(view, self._runner.stop_grace)
        except Exception as e:  # the serving version is fine: the deploy failed, not it
            log.exception("stopping version %d of %s failed", old.version, ws.name)
            raise DeployFailed(f"version {old.version} could not be stopped: {e}") from e
        finally:
            await self._runner.update(ws_id, peer=None, peer_run_token_hash=None, tell=True)


def check_mode(ws: Workspace, mode: RestartMode) -> RestartMode:
    """A replace needs a process workspace whose running agent was started to share its state
    directory (restart_mode replace); raise Conflict otherwise."""
    if mode is RestartMode.REPLACE and ws.runtime is Runtime.EXTERNAL:
        raise Conflict(
            f"a replace runs two versions side by side; {ws.runtime.value} workspaces "
            "restart stop-first",
            code="replace_unsupported",
        )
    if mode is RestartMode.REPLACE and ws.restart_mode is not RestartMode.REPLACE:
        raise Conflict(
            f"workspace {ws.name} runs with restart_mode stop-first (its agent may hold its "
            "state alone): deploy once with restart_mode replace, then replace",
            code="restart_mode_stop_first",
        )
    return mode


def spec_change(ws: Workspace, change: dict[str, Any]) -> dict[str, Any]:
    """The fields a stop-first deploy writes: the new spec, as the next version."""
    out: dict[str, Any] = {k: change[k] for k in SPEC_FIELDS if k in change}
    if change.get("restart_mode") is not None:
        out["limits"] = {**ws.limits, "restart_mode": change["restart_mode"].value}
    return {**out, "version": ws.version + 1}


def _settled(w: Workspace | None, version: int) -> bool:
    """The wait for the next version ends: it registered, or the deploy was undone."""
    return w is None or w.peer is None or w.peer.version != version or w.peer.agent_url is not None
