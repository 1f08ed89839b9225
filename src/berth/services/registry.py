"""The agent side of the registry: registration, heartbeats, liveness and crash handling,
plus what berth does for its workspaces when it starts and stops."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import Any

from berth.domain.deploy import Role
from berth.domain.errors import Conflict, InvalidInput, Unauthorized
from berth.domain.lifecycle import SHOULD_RUN, WorkspaceState
from berth.domain.restart import Trigger
from berth.domain.workspace import RestartPolicy, Runtime, Workspace
from berth.metrics import Metrics
from berth.ports import Provisioner, Store
from berth.services.agent_link import AgentLink
from berth.services.delivery_log import DeliveryLog
from berth.services.dispatcher import Dispatcher
from berth.services.events import Events
from berth.services.heartbeats import Heartbeats
from berth.services.lifecycle import Runner, hash_token
from berth.services.restart import RestartService
from berth.services.roster import Roster

log = logging.getLogger("berth.registry")
S = WorkspaceState
__all__ = ["Registry"]

COMES_ONLINE = frozenset({S.PROVISIONING, S.OFFLINE})
STUCK_DRAINING = 5.0  # seconds an online workspace's agent may say it drains for berth


class Registry:
    def __init__(
        self,
        runner: Runner,
        restarts: RestartService,
        store: Store,
        heartbeats: Heartbeats,
        deliveries: DeliveryLog,
        roster: Roster,
        dispatcher: Dispatcher,
        link: AgentLink,
        provisioners: dict[str, Provisioner],
        events: Events,
        metrics: Metrics,
        *,
        crash_loop_limit: int,
        crash_loop_window: float,
    ) -> None:
        self._runner, self._restarts = runner, restarts
        self._store, self._log, self._roster = store, deliveries, roster
        self._beats = heartbeats
        self._dispatcher, self._link, self._events = dispatcher, link, events
        self._provisioners = provisioners
        self._metrics = metrics
        self._loop_limit = crash_loop_limit
        self._loop_window = crash_loop_window
        self._crashes: dict[str, deque[float]] = defaultdict(deque)
        # online workspaces whose agent says it drains: (since, last heard)
        self._draining_since: dict[str, tuple[float, float]] = {}
        self.agent_auth: Callable[[str | None], Awaitable[Workspace]] | None = None
        self.url_check: Callable[[str, Workspace], Awaitable[str]] | None = None

    async def authenticate(self, token: str | None) -> Workspace:
        """The workspace of an agent credential (services.access: a run credential or an
        external agent's own; caller credentials and the admin token are refused)."""
        if self.agent_auth is None:
            raise Unauthorized("no agent authentication configured")
        return await self.agent_auth(token)

    async def register(self, token: str | None, body: Any) -> dict[str, Any]:
        ws = await self.authenticate(token)
        peer = _is_peer(ws, token)
        if not isinstance(body, dict):
            raise InvalidInput("the body must be a JSON object")
        url = body.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidInput("url: the http(s) URL where berth reaches the agent")
        if self.url_check is not None:  # the agent URL policy (services.url_policy)
            await self.url_check(url, ws)
        card = body.get("agent_card")
        caps = body.get("capabilities") or {}
        if card is not None and not isinstance(card, dict) or not isinstance(caps, dict):
            raise InvalidInput("agent_card and capabilities must be JSON objects")
        fields: dict[str, Any] = {
            "agent_url": url,
            "agent_card": card,
            "capabilities": caps,
            "last_heartbeat": time.time(),
        }
        if peer:
            peer_inst = ws.peer
            if peer_inst is not None:
                await self._refuse_a_foreign_listener(ws.as_instance(peer_inst), url)
            return await self._register_peer(ws, url, card, caps)
        await self._refuse_a_foreign_listener(ws, url)
        mc = body.get("max_concurrency")
        if mc is not None:
            if not isinstance(mc, int) or isinstance(mc, bool) or mc < 1:
                raise InvalidInput("max_concurrency: a positive integer")
            fields["max_concurrency"] = mc
        if ws.state is S.OFFLINE:  # an external agent back from silence: offline -> provisioning
            ws = await self._runner.move(ws, S.PROVISIONING, only_from=frozenset({S.OFFLINE})) or ws
        moved = await self._runner.move(ws, S.ONLINE, only_from=COMES_ONLINE, **fields)
        if moved is None:
            moved = await self._runner.update(ws.id, **fields)
        await self._link.remember(moved)
        await self._events.emit("workspace.registered", workspace_id=ws.id, name=ws.name, url=url)
        self._dispatcher.wake(ws.id)
        return {
            "workspace_id": ws.id,
            "name": ws.name,
            "heartbeat_seconds": self._beats.told(ws.id),
        }

    async def _refuse_a_foreign_listener(self, ws: Workspace, url: str) -> None:
        """A process agent whose port another program took before it could bind it still
        sees that port accept connections; an agent that registers then (before its own
        bind fails) would have berth forward the workspace's messages to that program. The
        provisioner that started it here tells (`Provisioner.serves`); where it cannot tell,
        or did not start it (another replica's), the registration counts."""
        if ws.runtime is not Runtime.PROCESS:  # Docker: the engine binds the published port
            return
        p = self._provisioners.get(ws.runtime.value)
        if p is None or not await p.is_running(ws):
            return  # not a runtime of this replica, or not started here: cannot tell
        if await p.serves(ws, url) is False:
            log.warning(
                "workspace %s registered %s, where another program listens: refused", ws.name, url
            )
            raise Conflict(
                f"what listens at {url} is not workspace {ws.name}'s agent process (another "
                "program holds the port)",
                code="not_the_agent",
            )

    async def _register_peer(
        self, ws: Workspace, url: str, card: Any, caps: dict[str, Any]
    ) -> dict[str, Any]:
        """A deploy's next version registered: remember where it is; it serves at the switch."""
        peer = ws.peer_copy()
        if peer is not None and peer.role is Role.NEXT and peer.agent_url is None:
            peer.agent_url, peer.agent_card, peer.capabilities = url, card, caps
            peer.registered_at = time.time()
            await self._runner.update(ws.id, peer=peer, tell=True)
            await self._events.emit(
                "workspace.registered",
                workspace_id=ws.id,
                name=ws.name,
                url=url,
                version=peer.version,
            )
        return {
            "workspace_id": ws.id,
            "name": ws.name,
            "heartbeat_seconds": self._beats.told(ws.id),
        }

    async def heartbeat(self, token: str | None, body: Any) -> dict[str, Any]:
        ws = await self.authenticate(token)
        if not isinstance(body, dict):
            raise InvalidInput("the body must be a JSON object")
        active = body.get("active_tasks", 0)
        if not isinstance(active, int) or isinstance(active, bool) or active < 0:
            raise InvalidInput("active_tasks: a non-negative integer")
        if _is_peer(ws, token):  # the other version of a deploy: the record is not its own
            return {
                "ok": True,
                "reregister": ws.peer is not None and ws.peer.agent_url is None,
                "heartbeat_seconds": self._beats.told(ws.id),
            }
        now = time.time()
        if active != ws.active_tasks:
            ws = await self._runner.update(ws.id, last_heartbeat=now, active_tasks=active)
        else:  # nothing but the time changed: the store gets it at the next flush
            self._beats.beat(ws.id, now)
        out = {
            "ok": True,
            "reregister": ws.state in COMES_ONLINE or ws.agent_url is None,
            "heartbeat_seconds": self._beats.told(ws.id),
        }
        # `exiting` false: an agent that tells a drain for berth from its own exit (the
        # SDK); one that does not say (an older SDK, another language) is never told
        if body.get("draining") is True and body.get("exiting") is False:
            if await self._stuck_draining(ws, now):
                out["resume"] = True
        else:
            self._draining_since.pop(ws.id, None)
        return out

    async def _stuck_draining(self, ws: Workspace, now: float) -> bool:
        """An agent that says it drains for berth (a restart's or a pause's drain, not its
        own exit) while its workspace is online and no cycle runs on it is stuck: nothing
        will tell it to resume (the cycle's resume signal was lost), and it refuses every
        message (DRAINING) while online. Once that has held for STUCK_DRAINING seconds (a
        cycle's own steps are never taken for it), its heartbeat's answer tells it to resume."""
        if ws.state is not S.ONLINE:
            self._draining_since.pop(ws.id, None)
            return False
        since, last = self._draining_since.get(ws.id, (now, now))
        if now - last > 3 * self._beats.told(ws.id) + STUCK_DRAINING:
            since = now  # heartbeats went elsewhere meanwhile (other replicas): a new wait
        if ws.id not in self._draining_since:  # entries left by removed workspaces go here
            old = now - 3 * self._beats.told(ws.id) - 2 * STUCK_DRAINING
            for k in [k for k, (_, seen) in self._draining_since.items() if seen < old]:
                del self._draining_since[k]
        self._draining_since[ws.id] = (since, now)
        if now - since < STUCK_DRAINING or await self._store.active_restart(ws.id) is not None:
            return False
        # this replica's roster may lag a pause or a stop another replica began (those
        # write no restart record): the store has the workspace's state as it is now
        if (await self._store.get_workspace(ws.id)).state is not S.ONLINE:
            return False
        del self._draining_since[ws.id]
        log.warning(
            "workspace %s: its agent was still draining %.0f s after its workspace came online "
            "with no restart running; told to resume",
            ws.name,
            now - since,
        )
        self._metrics.inc("berth_agents_resumed_total", workspace=ws.name)
        return True

    # crashes ---------------------------------------------------------------
    def on_exit(self, ws_id: str, code: int | None, version: int | None = None) -> None:
        """The provisioner saw the workspace's runtime exit (callback; schedules the handling).
        An instance of another version than the serving one is a deploy's: never a crash."""
        ws = self._roster.peek(ws_id)
        if version is not None and ws is not None and version != ws.version:
            self._runner.peer_exited(ws_id, version, code)
            return
        if ws_id in self._runner.stopping or self._runner.exited_while_starting(ws_id, code):
            return
        asyncio.ensure_future(self._crashed(ws_id, f"exited with code {code}"))

    async def _crashed(self, ws_id: str, why: str) -> None:
        ws = self._roster.peek(ws_id)
        if (
            ws is None
            or ws.state not in (S.ONLINE, S.PROVISIONING)
            or ws.owner not in (None, self._runner.owner)
        ):
            return
        now = time.time()
        crashes = self._crashes[ws_id]
        crashes.append(now)
        while crashes and crashes[0] < now - self._loop_window:
            crashes.popleft()
        self._metrics.inc("berth_crashes_total", workspace=ws.name)
        log.warning("workspace %s %s", ws.name, why)
        moved = await self._runner.move(
            ws,
            S.OFFLINE,
            only_from=frozenset({S.ONLINE, S.PROVISIONING}),
            crash_count=ws.crash_count + 1,
            last_error=why,
        )
        if moved is None:
            return
        await self._events.emit("workspace.crashed", workspace_id=ws.id, name=ws.name, detail=why)
        if moved.restart_policy is RestartPolicy.NEVER:
            await self._runner.move(moved, S.FAILED, last_error=f"{why}; restart policy is never")
            return
        if len(crashes) >= self._loop_limit:
            await self._runner.move(
                moved,
                S.FAILED,
                last_error=(
                    f"crash loop: {len(crashes)} crashes in {self._loop_window:g} s; last: {why}"
                ),
            )
            return
        delay = min(30.0, 0.5 * 2 ** (len(crashes) - 1))
        await self._restarts.request(moved, trigger=Trigger.POLICY, reason=why, delay=delay)

    async def liveness(self, period: float) -> None:
        """Treat a workspace that stopped heartbeating as crashed (runs in the lifespan); each
        pass also flushes this replica's heartbeats to the store and reads those of others.

        While the store is away, beats that other replicas took cannot be seen, so silence
        says nothing about the agents: liveness waits, and counts silence only from the
        moment the store answers again (and from its own start: berth was not listening)."""
        store_back_at = time.time()
        while True:
            await asyncio.sleep(period)
            try:
                await self._beats.flush()
                stored = await self._beats.stored()
            except Exception as e:  # noqa: BLE001 - any failure: the store is away
                if store_back_at >= 0:
                    log.warning("store unavailable (%s); liveness checks wait for it", e)
                store_back_at = -1.0
                continue
            now = time.time()
            if store_back_at < 0:
                store_back_at = now
            for ws in self._roster.all():
                if ws.state is not S.ONLINE or ws.owner not in (None, self._runner.owner):
                    continue
                if ws.last_heartbeat is None:
                    continue
                last = max(ws.last_heartbeat, stored.get(ws.id, 0.0))
                if now - max(last, store_back_at) > self._beats.timeout_for(ws.id):
                    try:
                        await self._lost(ws, now - last)
                    except Exception:
                        log.exception("liveness handling of %s failed", ws.name)

    async def _lost(self, ws: Workspace, silent: float) -> None:
        why = f"no heartbeat for {silent:.1f} s"
        if ws.runtime is Runtime.EXTERNAL:
            await self._runner.move(ws, S.OFFLINE, only_from=frozenset({S.ONLINE}), last_error=why)
            return
        await self._runner.stop(ws, grace=1.0)
        await self._crashed(ws.id, why)

    # berth's own start and stop ---------------------------------------------
    async def recover(self, *, take_over_leases: bool) -> None:
        """On start: stop agents a previous berth left behind, return its in-flight deliveries
        to the queue, and start every workspace that should run."""
        await self._roster.refresh()
        mine = {w.id: w for w in self._roster.all() if w.owner in (None, self._runner.owner)}
        for p in self._provisioners.values():
            for name in await p.cleanup_orphans(mine):
                log.info("stopped orphaned agent %s", name)
        if take_over_leases:
            n = await self._log.requeue_in_flight(None)
            if n:
                log.info("returned %d in-flight deliveries to the queue", len(n))
        for ws in mine.values():
            cut = await self._restarts.abandon(ws, "berth stopped during this cycle")
            if cut is not None:
                log.info("restart %s of %s was cut by berth's stop: marked failed", cut.id, ws.name)
            if ws.peer is not None:  # a deploy cut by berth's stop: its instances were stopped
                ws = await self._runner.update(ws.id, peer=None, peer_run_token_hash=None)
            if ws.runtime is Runtime.EXTERNAL or ws.state not in SHOULD_RUN:
                continue
            await self._runner.move(ws, S.OFFLINE)
            await self._restarts.request(
                await self._roster.get(ws.id), trigger=Trigger.STARTUP, reason="berth started"
            )

    async def shutdown(self) -> None:
        """Drain and stop the workspaces this replica runs; they start again with berth."""
        running = [
            w
            for w in self._roster.all()
            if w.runtime is not Runtime.EXTERNAL
            and w.owner in (None, self._runner.owner)
            and w.state in SHOULD_RUN
        ]

        async def one(ws: Workspace) -> None:
            try:
                if ws.peer is not None:  # a deploy's other instance: stopped, not drained
                    p = self._runner.provisioner(ws)
                    if p is not None:
                        await p.stop(ws.as_instance(ws.peer), self._runner.stop_grace)
                await self._restarts.drain_and_stop(ws, S.OFFLINE, "berth is stopping")
            except Exception:
                log.exception("stopping %s failed", ws.name)

        await asyncio.gather(*(one(w) for w in running))


def _is_peer(ws: Workspace, token: str | None) -> bool:
    """The token is the run token of the workspace's other instance (a deploy's)."""
    return (
        token is not None
        and ws.peer_run_token_hash is not None
        and hash_token(token) == ws.peer_run_token_hash
    )
