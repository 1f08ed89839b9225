"""Workspace use cases for operators: create, show, list, pause, resume, restart, remove."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import replace
from typing import Any

from berth.domain.deploy import RestartMode, validate_change
from berth.domain.errors import Conflict, InvalidInput
from berth.domain.lifecycle import WorkspaceState
from berth.domain.restart import RestartRecord, Trigger
from berth.domain.workspace import Workspace, validate_spec
from berth.ports import RestartStore, WorkspaceStore
from berth.services.access import Access
from berth.services.delivery_log import Backlog, DeliveryLog
from berth.services.events import Events
from berth.services.handoff import Handoff
from berth.services.lifecycle import Runner
from berth.services.restart import RestartService
from berth.services.roster import Roster

S = WorkspaceState
log = logging.getLogger("berth.workspaces")
__all__ = ["Workspaces"]


class Workspaces:
    def __init__(
        self,
        store: WorkspaceStore,
        deliveries: DeliveryLog,
        roster: Roster,
        runner: Runner,
        restarts: RestartService,
        events: Events,
        handoff: Handoff,
        access: Access,
        records: RestartStore,
        *,
        sole: bool,
    ) -> None:
        self._records = records
        self._store, self._log, self._roster = store, deliveries, roster
        self._runner, self._restarts, self._events = runner, restarts, events
        self._handoff = handoff
        self._access = access
        # the only replica (SQLite): every change goes through this roster, so a list needs
        # no read of the workspaces table; with several, others' changes are read first
        self._sole = sole

    async def create(self, body: dict[str, Any]) -> tuple[Workspace, dict[str, str]]:
        """The workspace, started, and its credentials (shown once: services.access)."""
        spec = validate_spec(body)
        now = time.time()
        ws = Workspace(
            id=str(uuid.uuid4()),
            created_at=now,
            updated_at=now,
            state=S.OFFLINE,
            url=spec.pop("url"),
            owner=self._runner.owner,
            **spec,
        )
        if ws.url:  # checked before berth sends anything to it (services.url_policy)
            ws.agent_url = await self._access.url_policy.check(ws.url, ws)
        self._runner.provisioner(ws)  # fails early if the runtime is unavailable here
        await self._store.create_workspace(ws)
        try:
            secrets = await self._access.issue_for(ws)
        except BaseException:
            await self._store.delete_workspace(ws.id)
            raise
        self._roster.put(ws)
        await self._events.emit("workspace.created", workspace_id=ws.id, name=ws.name)
        await self._restarts.request(ws, trigger=Trigger.STARTUP, reason="created")
        return await self._roster.get(ws.id), secrets

    async def get(self, ref: str) -> Workspace:
        return await self._roster.get(ref)

    async def show(self, ref: str) -> dict[str, Any]:
        ws = await self.get(ref)
        return await self._log.status_of(ws)

    async def list(self) -> list[dict[str, Any]]:
        if not self._sole:
            await self._roster.refresh()
        backlogs = await self._log.backlogs()
        idle = Backlog(0, 0, None, time.time())
        return [
            await self._log.status_of(ws, backlogs.get(ws.id, idle))
            for ws in sorted(self._roster.all(), key=lambda w: w.created_at)
        ]

    async def restart(
        self,
        ref: str,
        *,
        reason: str | None,
        drain_seconds: float | None,
        mode: RestartMode | None = None,
    ) -> tuple[RestartRecord, bool]:
        ws = await self.get(ref)
        args = {
            "reason": reason,
            "drain_seconds": drain_seconds,
            "mode": None if mode is None else mode.value,
        }
        answer = await self._where(ws, "restart", args)
        return await self._restarts.record(ws.id, str(answer["restart_id"])), bool(answer["joined"])

    async def deploy(self, ref: str, body: Any) -> RestartRecord:
        """A new version of the spec (command, image, env, restart mode): started beside the
        running one and switched to (replace), or stop-then-start (stop-first)."""
        ws = await self.get(ref)
        validate_change(body, ws.runtime.value, ws.env)  # refused here, before any handoff
        answer = await self._where(ws, "deploy", {"body": body})
        return await self._restarts.record(ws.id, str(answer["restart_id"]))

    async def _deploy(self, ws: Workspace, body: Any) -> dict[str, Any]:
        change = validate_change(body, ws.runtime.value, ws.env)
        mode = change.pop("mode", None)
        if change.get("canary") is not None:
            mode = RestartMode.REPLACE
        record, _ = await self._restarts.request(
            ws,
            trigger=Trigger.DEPLOY,
            reason=change.pop("reason", None),
            drain_seconds=change.pop("drain_seconds", None),
            mode=mode,
            change=change,
        )
        return {"restart_id": record.id, "joined": False}

    async def decide(self, ref: str, decision: str) -> RestartRecord:
        """Promote or roll back the running canary by hand (its cycle, on the workspace's
        owner, acts on it)."""
        ws = await self.get(ref)
        answer = await self._where(ws, "decide", {"decision": decision})
        return await self._restarts.record(ws.id, str(answer["restart_id"]))

    async def _decide(self, ws: Workspace, decision: Any) -> dict[str, Any]:
        peer = ws.peer
        if peer is None or peer.canary is None:
            raise Conflict(f"workspace {ws.name} runs no canary", code="no_canary")
        record = await self._records.active_restart(ws.id)
        if record is None:
            raise Conflict(f"workspace {ws.name} runs no canary", code="no_canary")
        if decision not in ("promote", "rollback"):
            raise InvalidInput("decision: promote or rollback")
        peer = replace(peer, decision=decision)  # the roster's record changes by a write only
        await self._runner.update(ws.id, peer=peer, tell=True)
        return {"restart_id": record.id}

    async def pause(self, ref: str) -> dict[str, Any]:
        ws = await self.get(ref)
        if ws.state is S.PAUSED:
            return {"workspace": ws.public(), "drain_report": None}
        return await self._where(ws, "pause", {})

    async def resume(self, ref: str) -> dict[str, Any]:
        ws = await self.get(ref)
        if ws.state is not S.PAUSED:
            raise Conflict(
                f"workspace {ws.name} is {ws.state.value}, not paused", code="not_paused"
            )
        return await self._where(ws, "resume", {})

    async def remove(self, ref: str) -> dict[str, Any]:
        ws = await self.get(ref)
        out = await self._where(ws, "remove", {})
        self._roster.drop(ws.id)
        return out

    async def _where(self, ws: Workspace, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run a lifecycle operation here, or on the replica that runs the workspace."""
        owner = self._handoff.owner_elsewhere(ws)
        if owner is None:
            return await self.here(op, ws.id, args)
        return await self._handoff.ask(owner, ws, op, args)

    async def here(self, op: str, ws_id: str, args: dict[str, Any]) -> dict[str, Any]:
        """A lifecycle operation on this replica (also when another replica asked for it)."""
        ws = await self.get(ws_id)
        if op == "restart":
            record, joined = await self._restarts.request(
                ws,
                trigger=Trigger.API,
                reason=args.get("reason"),
                drain_seconds=args.get("drain_seconds"),
                mode=RestartMode(args["mode"]) if args.get("mode") else None,
            )
            return {"restart_id": record.id, "joined": joined}
        if op == "deploy":
            return await self._deploy(ws, args.get("body"))
        if op == "decide":
            return await self._decide(ws, args.get("decision"))
        ops = {"pause": self._pause, "resume": self._resume, "remove": self._remove}
        if op not in ops:
            raise InvalidInput(f"unknown lifecycle operation {op!r}")
        return await ops[op](ws)

    async def serve_owner(self) -> None:
        """Run what other replicas ask of this one (a background loop)."""
        await self._handoff.serve(self.here)

    async def close(self) -> None:
        await self._handoff.close()

    async def _pause(self, ws: Workspace) -> dict[str, Any]:
        if ws.state is S.PAUSED:
            return {"workspace": ws.public(), "drain_report": None}
        async with self._restarts.exclusive(ws):
            ws = await self.get(ws.id)
            report = await self._restarts.drain_and_stop(ws, S.PAUSED, "paused by an operator")
        return {"workspace": (await self.get(ws.id)).public(), "drain_report": report}

    async def _resume(self, ws: Workspace) -> dict[str, Any]:
        if ws.state is not S.PAUSED:
            raise Conflict(
                f"workspace {ws.name} is {ws.state.value}, not paused", code="not_paused"
            )
        ws = await self._runner.move(ws, S.OFFLINE, only_from=frozenset({S.PAUSED})) or ws
        record, _ = await self._restarts.request(
            ws, trigger=Trigger.RESUME, reason="resumed by an operator"
        )
        return {"workspace": (await self.get(ws.id)).public(), "restart": record.public()}

    async def _remove(self, ws: Workspace) -> dict[str, Any]:
        async with self._restarts.exclusive(ws):
            ws = await self.get(ws.id)
            await self._restarts.drain_and_stop(ws, S.REMOVED, "workspace removed")
            canceled = await self._log.cancel_pending(ws.id, "workspace removed")
            await self._store.delete_workspace(ws.id)
        self._roster.drop(ws.id)
        await self._access.forget(ws)
        provisioner = self._runner.provisioner(ws)
        if provisioner is not None:
            try:
                await provisioner.remove_state(ws)
            except Exception:  # noqa: BLE001 - the workspace is gone either way; say so in the log
                log.warning("could not remove the state of %s", ws.name, exc_info=True)
        await self._events.emit("workspace.removed", workspace_id=ws.id, name=ws.name)
        return {
            "workspace": {**ws.public(), "status": S.REMOVED.value},
            "canceled": [d.public() for d in canceled],
        }
