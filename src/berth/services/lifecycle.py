"""The steps every lifecycle operation is made of: drain, stop, start.

Restart, pause, resume, delete, crash recovery and berth's own start and shutdown are
ladders of these steps (see services/restart.py); each step does one thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from berth.domain.credentials import hash_secret, new_secret
from berth.domain.delivery import DeliveryStatus
from berth.domain.deploy import RestartMode
from berth.domain.errors import BerthError, InvalidInput, StartFailed
from berth.domain.lifecycle import WorkspaceState
from berth.domain.workspace import Runtime, Workspace
from berth.ports import Provisioner, WorkspaceStore
from berth.services.agent_link import AgentLink, SignalOutcome
from berth.services.delivery_log import DeliveryLog
from berth.services.dispatcher import Dispatcher
from berth.services.events import WS_TOPIC, Events
from berth.services.roster import Roster

log = logging.getLogger("berth.lifecycle")
S = WorkspaceState
_NOT_ONLINE = frozenset(WorkspaceState) - {S.ONLINE}
__all__ = ["DrainReport", "Runner", "StartFailed", "hash_token", "new_token"]


def new_token() -> str:
    """A start's run credential (berth.domain.credentials)."""
    return new_secret("run")


def hash_token(token: str) -> str:
    return hash_secret(token)


@dataclass
class DrainReport:
    mode: str  # "agent", "berth" or "skipped"
    drained: bool
    completed: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    in_flight: int = 0
    detail: str | None = None

    @classmethod
    def of_agent(cls, r: dict[str, Any]) -> DrainReport:
        """The agent's own drain report (its answer to `restart_pending`)."""
        return cls(
            "agent",
            bool(r.get("drained")),
            list(r.get("completed") or []),
            list(r.get("unfinished") or []),
            int(r.get("in_flight") or 0),
        )

    def public(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "drained": self.drained,
            "in_flight": self.in_flight,
            "completed": self.completed,
            "unfinished": self.unfinished,
            "detail": self.detail,
        }


class Runner:
    def __init__(
        self,
        store: WorkspaceStore,
        deliveries: DeliveryLog,
        roster: Roster,
        provisioners: dict[str, Provisioner],
        link: AgentLink,
        dispatcher: Dispatcher,
        events: Events,
        *,
        berth_url: str,
        owner: str,
        start_timeout: float,
        stop_grace: float,
        instance: str,
    ) -> None:
        self._store, self._log, self._roster = store, deliveries, roster
        self.provisioners, self._link = provisioners, link
        self._dispatcher, self._events = dispatcher, events
        self.berth_url, self.owner, self.instance = berth_url, owner, instance
        self.start_timeout, self.stop_grace = start_timeout, stop_grace
        self.stopping: set[str] = set()  # exits of these are expected
        self._start_exit: dict[str, asyncio.Future[int | None]] = {}
        self._peer_exit: dict[tuple[str, int], asyncio.Future[int | None]] = {}

    def provisioner(self, ws: Workspace) -> Provisioner | None:
        if ws.runtime is Runtime.EXTERNAL:
            return None
        p = self.provisioners.get(ws.runtime.value)
        if p is None:
            raise InvalidInput(
                f"runtime {ws.runtime.value} is not available on this server",
                code="runtime_unavailable",
            )
        return p

    async def move(
        self,
        ws: Workspace,
        to: WorkspaceState,
        *,
        only_from: frozenset[WorkspaceState] | None = None,
        **fields: Any,
    ) -> Workspace | None:
        moved = await self._store.move_workspace(ws.id, to, only_from=only_from, **fields)
        if moved is not None:
            self._roster.put(moved)
            await self._events.signal(WS_TOPIC, workspace_id=ws.id)
            if moved.state is not ws.state:
                await self._events.emit(
                    "workspace.state",
                    workspace_id=ws.id,
                    name=ws.name,
                    state=moved.state.value,
                    previous=ws.state.value,
                )
        return moved

    async def update(self, ws_id: str, *, tell: bool = False, **fields: Any) -> Workspace:
        """Change fields of a workspace other than its state (a state changes by `move`);
        `tell`: other replicas refresh it at once (their roster, not only a periodic poll)."""
        ws = await self._store.update_workspace(ws_id, **fields)
        self._roster.put(ws)
        if tell:
            await self._events.signal(WS_TOPIC, workspace_id=ws_id)
        return ws

    # drain ----------------------------------------------------------------
    async def drain(
        self, ws: Workspace, *, restart_id: str, drain_seconds: float, reason: str | None
    ) -> DrainReport:
        """Ask the agent to drain; if it cannot, drain on berth's side. Never blocks past
        drain_seconds plus a small margin. Called once the workspace's move out of online
        (to draining) is committed: from then on the fast lane accepts nothing more for it,
        so what it forwards now is read from the store, whether or not its feed said so."""
        await self._dispatcher.lane.sync(ws.id)
        before = set(self._dispatcher.in_flight(ws.id))
        res = await self._link.signal_restart(
            ws, restart_id=restart_id, drain_seconds=drain_seconds, reason=reason
        )
        if res.outcome is SignalOutcome.DRAINED:
            report = DrainReport.of_agent(res.report)
            # The agent has answered those it completed; give their replies a moment to land.
            await self._dispatcher.wait_idle(ws.id, 2.0 if not report.unfinished else 0.2)
            return report
        if res.outcome is SignalOutcome.NO_DRAIN:
            idle = await self._dispatcher.wait_idle(ws.id, drain_seconds)
            left = set(self._dispatcher.in_flight(ws.id))
            ids = await self.message_ids(before)
            done = [ids[i] for i in before - left if i in ids]
            return DrainReport(
                "berth", idle, done, [ids[i] for i in left if i in ids], len(left), res.detail
            )
        return DrainReport("skipped", False, detail=f"{res.outcome.value}: {res.detail}")

    async def message_ids(self, delivery_ids: set[str]) -> dict[str, str]:
        out = {}
        for i in delivery_ids:
            try:
                out[i] = (await self._log.get(i)).message_id
            except BerthError:
                pass
        return out

    # stop -----------------------------------------------------------------
    async def stop(self, ws: Workspace, grace: float | None = None) -> None:
        p = self.provisioner(ws)
        if p is None:
            return
        self.stopping.add(ws.id)
        try:
            await p.stop(ws, self.stop_grace if grace is None else grace)
        finally:
            self.stopping.discard(ws.id)
        await self._link.forget(ws.id)

    async def in_flight(self, ws: Workspace) -> set[str]:
        """The workspace's deliveries in flight now (on any replica)."""
        return {d.id for d in await self._log.recent(ws.id, DeliveryStatus.IN_FLIGHT, 10_000)}

    async def requeue(self, ws: Workspace, cut: set[str]) -> int:
        """Return what is still in flight to the queue; the count includes those of `cut`
        (in flight when the stop began) that a failed forward already put back while the
        agent stopped, so the restart report says what will run again."""
        ids = set(await self._log.requeue_in_flight(ws.id))
        self._dispatcher.lane.lost(sorted(ids))  # the fast lane's forwards cut by the stop
        for i in cut - ids:
            with contextlib.suppress(BerthError):
                if (await self._log.get(i)).status is DeliveryStatus.QUEUED:
                    ids.add(i)
        return len(ids)

    # start ----------------------------------------------------------------
    async def start(self, ws: Workspace) -> Workspace:
        """Start the runtime and wait until the agent registers (the workspace is online)."""
        p = self.provisioner(ws)
        token = new_token()
        moved = await self.move(
            ws,
            S.PROVISIONING,
            # an external agent that registered since the caller read `ws` (it may register
            # the moment its workspace is created, on any replica) is the start this waits
            # for: it stays online, not back to provisioning to wait for itself
            only_from=None if p is not None else _NOT_ONLINE,
            run_token_hash=hash_token(token),
            owner=self.owner,
            agent_url=None if p is not None else ws.agent_url,
        )
        if moved is None and p is None:
            await self._roster.refresh(ws.id)
            now = self._roster.peek(ws.id)
            if now is not None and now.state is S.ONLINE:
                return now
        if moved is None:
            raise StartFailed(f"workspace {ws.name} vanished while starting")
        ws = moved
        if p is None:  # external: it comes online when it registers or heartbeats
            return ws
        exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._start_exit[ws.id] = exited
        try:
            info = await p.start(ws, self.identity(ws, token))
            # the URL is known before the agent registers: a stock A2A agent never does, and
            # berth's card probe finds it there (services/probe.py)
            where: dict[str, Any] = {"agent_url": info.url} if info.url else {}
            ws = await self.update(ws.id, pid=info.pid, state_dir=info.state_dir, **where)
            online = asyncio.ensure_future(
                self._roster.wait_for(
                    ws.id, lambda w: w is None or w.state is not S.PROVISIONING, self.start_timeout
                )
            )
            done, _ = await asyncio.wait(
                {online, exited},  # type: ignore[type-var]
                return_when=asyncio.FIRST_COMPLETED,
            )
            if exited in done:
                online.cancel()
                raise StartFailed(
                    f"the agent exited with code {exited.result()} before registering"
                )
            current = self._roster.peek(ws.id)
            if current is None or current.state is not S.ONLINE:
                state = "gone" if current is None else current.state.value
                raise StartFailed(
                    f"the agent did not register within {self.start_timeout:g} s ({state})"
                )
            return current
        except StartFailed:
            await self.stop(ws, grace=1.0)
            raise
        except BerthError:
            raise
        except Exception as e:
            log.exception("starting %s failed", ws.name)
            raise StartFailed(f"could not start: {e}") from e
        finally:
            self._start_exit.pop(ws.id, None)

    def exited_while_starting(self, ws_id: str, code: int | None) -> bool:
        """True if this exit fails a start in progress (the agent never registered); an exit
        after registration is a crash, even if the start has not returned yet."""
        fut = self._start_exit.get(ws_id)
        ws = self._roster.peek(ws_id)
        if fut is None or ws is None or ws.state is not S.PROVISIONING:
            return False
        if not fut.done():
            fut.set_result(code)
        return True

    def identity(self, ws: Workspace, token: str, *, shared: bool | None = None) -> dict[str, str]:
        """The agent's BERTH_* environment. `shared`: another version may run on its state
        directory (default: the spec's restart mode is replace)."""
        if shared is None:
            shared = ws.restart_mode is RestartMode.REPLACE
        return {
            "BERTH_URL": self.berth_url,
            "BERTH_WORKSPACE_ID": ws.id,
            "BERTH_WORKSPACE_NAME": ws.name,
            "BERTH_WORKSPACE_TOKEN": token,
            "BERTH_DRAIN_SECONDS": f"{ws.drain_seconds:g}",
            "BERTH_MAX_CONCURRENCY": str(ws.max_concurrency),
            "BERTH_INSTANCE": self.instance,
            **({"BERTH_SHARED_STATE": "1"} if shared else {}),
        }

    def expect_peer_exit(self, ws_id: str, version: int) -> asyncio.Future[int | None]:
        """A future set if the instance `version` of the workspace exits (a deploy waits on it)."""
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._peer_exit[(ws_id, version)] = fut
        return fut

    def peer_exited(self, ws_id: str, version: int, code: int | None) -> None:
        fut = self._peer_exit.pop((ws_id, version), None)
        if fut is not None and not fut.done():
            fut.set_result(code)

    async def wait_gone(self, ws: Workspace, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        p = self.provisioner(ws)
        while p is not None and time.monotonic() < deadline and await p.is_running(ws):
            await asyncio.sleep(0.05)
