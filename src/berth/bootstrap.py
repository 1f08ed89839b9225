"""The one place that reads Settings and picks adapters; builds the object graph."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from berth.adapters.agent_http import HttpAgentClient
from berth.adapters.memory_bus import MemoryBus, MemoryCache, MemoryLocks
from berth.adapters.process import ProcessProvisioner
from berth.adapters.sql.sqlite import SqliteStore
from berth.domain.delivery import DeliveryPolicy, QueueLimit
from berth.domain.errors import StoreUnavailable
from berth.hardening import agent_user, secure_data_dir
from berth.metrics import Metrics
from berth.ports import BUS_GAP, AgentClient, Bus, Cache, Locks, Provisioner, Store
from berth.services.access import Access
from berth.services.agent_link import AgentLink
from berth.services.canary import Canary
from berth.services.delivery_log import DeliveryLog
from berth.services.deploy import Replacer
from berth.services.dispatcher import Dispatcher
from berth.services.events import WORK_TOPIC, WS_TOPIC, Events
from berth.services.handoff import Handoff
from berth.services.heartbeats import Heartbeats
from berth.services.idle import Idle
from berth.services.lifecycle import Runner
from berth.services.probe import Prober
from berth.services.proxy import Proxy
from berth.services.registry import Registry
from berth.services.restart import RestartService
from berth.services.roster import Roster
from berth.services.routing import Router
from berth.services.supervisor import Supervisor
from berth.services.url_policy import AgentUrlPolicy, parse_networks
from berth.services.workspaces import Workspaces
from berth.settings import Settings

if TYPE_CHECKING:
    from berth.lane import Lane

log = logging.getLogger("berth")
__all__ = ["Container", "admin_token", "build"]


@dataclass
class Container:
    """The object graph of one berth replica, and the loops it runs for its whole life."""

    settings: Settings
    store: Store
    cache: Cache
    locks: Locks
    bus: Bus
    client: AgentClient
    provisioners: dict[str, Provisioner]
    in_docker: bool  # berth itself runs as a container of its Docker engine
    metrics: Metrics
    roster: Roster
    events: Events
    deliveries: DeliveryLog
    dispatcher: Dispatcher
    link: AgentLink
    runner: Runner
    restarts: RestartService
    workspaces: Workspaces
    registry: Registry
    heartbeats: Heartbeats
    proxy: Proxy
    access: Access
    idle: Idle
    admin_token: str
    sole: bool  # the only replica on its log: on start it takes over every lease
    supervisor: Supervisor = field(default_factory=Supervisor)
    lane: Lane | None = None  # the fast lane, set by `berth serve` (docs/fast-lane.md)

    async def start(self) -> None:
        await self._migrate()
        await self.bus.start()  # subscribed across replicas before anything listens or publishes
        run = self.supervisor.run
        run("dispatcher-upkeep", self.dispatcher.upkeep)
        if not self.sole:  # other replicas' settles; the only replica resolves its own
            run("waiters", self.deliveries.listen)
        run("replicas", self._follow_replicas)
        run("housekeeping", self._housekeeping)
        run("flow-events", self.events.pump)
        run("handoff", self.workspaces.serve_owner)  # lifecycle asked of us by other replicas
        await self.registry.recover(take_over_leases=self.sole)
        await self.idle.recover()
        # only now: during recovery the agents a killed berth left behind still heartbeat
        # (or fall silent as they are stopped), and liveness would call them crashed and
        # race recovery's own restarts (found by bench/chaos: workspaces ended failed)
        run("liveness", lambda: self.registry.liveness(self.settings.heartbeat_seconds))
        run("idle", lambda: self.idle.watch(self.settings.heartbeat_seconds))
        prober = Prober(  # agents that do not register or heartbeat (stock A2A servers)
            self.roster,
            self.client,
            self.runner,
            self.link,
            self.dispatcher,
            self.events,
            self.heartbeats,
        )
        run("probe", lambda: prober.run(self.settings.heartbeat_seconds))
        if self.lane is not None:  # after recovery: it may take work at once
            await self.lane.start()

    async def _migrate(self) -> None:
        """Bring the schema up to date, waiting for a database that cannot be reached yet
        (a replica started while PostgreSQL restarts starts when it is back)."""
        pause = 0.5
        while True:
            try:
                return await self.store.migrate()
            except StoreUnavailable as e:
                log.warning("%s; trying again in %g s", e.message, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    async def _follow_replicas(self) -> None:
        """Learn of other replicas' work and workspace changes."""
        sub = self.bus.subscribe(WORK_TOPIC, WS_TOPIC, BUS_GAP)
        try:
            async for topic, payload in sub:
                if topic == BUS_GAP:
                    # notices of changes (an allow-list, a run token, a state) were lost
                    # while the bus was away: read what changed rather than wait for the
                    # housekeeping's pass; work lost meanwhile the dispatcher's sweep finds
                    log.info("the replica bus was away: refreshing the roster")
                    try:
                        await self.roster.refresh()
                    except Exception as e:  # noqa: BLE001 - the housekeeping's pass mends it
                        log.warning("roster refresh after the bus came back failed: %s", e)
                    continue
                ws_id = payload.get("workspace_id")
                if not isinstance(ws_id, str):
                    continue
                if topic == WS_TOPIC:
                    await self.roster.refresh(ws_id)
                elif payload.get("replica") == self.dispatcher.owner:
                    continue  # our own announcement: this replica woke its loop already
                else:
                    self.idle.touch(ws_id)  # work from another replica wakes a suspended one
                self.dispatcher.wake(ws_id)
        finally:
            await sub.aclose()

    async def _housekeeping(self) -> None:
        """Retention and orphans, every `housekeeping_seconds`."""
        while True:
            await asyncio.sleep(self.settings.housekeeping_seconds)
            try:
                n = await self.deliveries.prune(time.time() - self.settings.retention_hours * 3600)
                if n:
                    log.info("pruned %d finished deliveries", n)
                await self.roster.refresh(full=True)
                # agents whose workspace is gone (removed on another replica, or left by a
                # crash between a start and its record): only those of no workspace at all
                known = {w.id: w for w in self.roster.all()}
                for p in self.provisioners.values():
                    for name in await p.cleanup_orphans(known):
                        log.info("removed orphaned agent %s", name)
            except Exception:
                log.exception(
                    "housekeeping pass failed; next one in %g s", self.settings.housekeeping_seconds
                )

    async def stop(self) -> None:
        if self.lane is not None:  # its hand-offs and settles end before the dispatcher's
            await self.lane.stop()
        await self.idle.close()
        await self.workspaces.close()
        await self.registry.shutdown()
        await self.restarts.close()
        await self.dispatcher.close(self.settings.shutdown_grace_seconds)
        await self.supervisor.close()
        for p in self.provisioners.values():
            await p.close()
        await self.client.close()
        await self.bus.close()
        await self.cache.close()
        await self.locks.close()
        await self.store.close()


def admin_token(settings: Settings) -> str:
    """BERTH_ADMIN_TOKEN if set; else the one stored in the data directory (made on first start)."""
    if settings.admin_token:
        return settings.admin_token
    path = settings.data_path / "admin_token"
    if path.exists():
        return path.read_text().strip()
    token = "bad_" + secrets.token_urlsafe(32)
    settings.data_path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _store(settings: Settings) -> Store:
    url = settings.store_url
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteStore(str(path), synchronous=settings.sqlite_synchronous)
    if url.startswith(("postgresql://", "postgres://")):
        from berth.adapters.sql.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported database url {url!r}: use sqlite:///… or postgresql://…")


def _shared(settings: Settings) -> tuple[Cache, Locks, Bus]:
    if not settings.redis_url:
        return MemoryCache(), MemoryLocks(), MemoryBus()
    from berth.adapters.redis import RedisBus, RedisCache, RedisLocks

    url, prefix = settings.redis_url, settings.redis_prefix
    return (
        RedisCache(url, prefix=prefix),
        RedisLocks(url, prefix=prefix),
        RedisBus(url, prefix=prefix),
    )


def _provisioners(settings: Settings) -> tuple[dict[str, Provisioner], bool]:
    """The runtimes this server offers, and whether berth runs as a container of its
    Docker engine (asked of the engine when BERTH_IN_DOCKER is not set)."""
    user = agent_user("" if settings.agent_user == "inherit" else settings.agent_user)
    root = settings.data_path / "workspaces"
    if settings.agent_dir:
        root = Path(settings.agent_dir).expanduser().resolve()
    elif user is not None:
        root = settings.data_path.with_name(settings.data_path.name + "-agents")
    out: dict[str, Provisioner] = {
        "process": ProcessProvisioner(root, instance=settings.instance, user=user),
    }
    in_docker = settings.running_in_docker()
    with contextlib.suppress(ImportError):
        from berth.adapters.docker import docker_provisioner

        dp = docker_provisioner(settings)
        if dp is not None:
            out["docker"] = dp
            in_docker = dp.in_docker
    return out, in_docker


def _client(settings: Settings) -> AgentClient:
    if settings.agent_client == "httpx":
        from berth.adapters.agent_httpx import HttpxAgentClient

        return HttpxAgentClient()
    if settings.agent_client != "aiohttp":
        raise ValueError(f"agent_client must be aiohttp or httpx, not {settings.agent_client!r}")
    return HttpAgentClient()


def build(settings: Settings) -> Container:
    """A replica on the adapters Settings ask for."""
    secure_data_dir(settings.data_path)  # 0700, files 0600, umask 077 from here on
    provisioners, in_docker = _provisioners(settings)
    return assemble(
        settings,
        store=_store(settings),
        shared=_shared(settings),
        client=_client(settings),
        provisioners=provisioners,
        in_docker=in_docker,
        admin=admin_token(settings),
    )


def assemble(
    settings: Settings,
    *,
    store: Store,
    shared: tuple[Cache, Locks, Bus],
    client: AgentClient,
    provisioners: dict[str, Provisioner],
    in_docker: bool = False,
    admin: str,
    sole: bool | None = None,
) -> Container:
    """Wire the services over the given adapters (the service tests pass in-memory ones and
    a fake agent client). `sole`: this replica is the only one on its log (default: the
    store is SQLite)."""
    cache, locks, bus = shared
    metrics = Metrics()
    roster = Roster(store)
    events = Events(bus, settings.replica)
    if sole is None:
        sole = isinstance(store, SqliteStore)
    deliveries = DeliveryLog(
        store, bus, events, metrics, replica=settings.replica, sole=sole, name_of=roster.name_of
    )
    link = AgentLink(store, cache, client, in_docker=in_docker)
    router = Router()
    dispatcher = Dispatcher(
        deliveries,
        client,
        roster,
        link,
        events,
        metrics,
        DeliveryPolicy(
            max_attempts=settings.max_attempts,
            backoff_base=settings.retry_backoff_seconds,
            backoff_max=30.0,
        ),
        router,
        lease_seconds=settings.lease_seconds,
        forward_timeout=settings.forward_timeout,
        sole=sole,
    )
    runner = Runner(
        store,
        deliveries,
        roster,
        provisioners,
        link,
        dispatcher,
        events,
        berth_url=settings.advertised_url,
        owner=settings.replica,
        start_timeout=settings.start_timeout,
        stop_grace=settings.stop_grace_seconds,
        instance=settings.instance,
    )
    canary = Canary(runner, roster, events, router, store)
    replacer = Replacer(runner, link, dispatcher, roster, events, canary)
    restarts = RestartService(
        runner, store, roster, dispatcher, link, events, locks, metrics, replacer
    )
    heartbeats = Heartbeats(
        store,
        roster,
        seconds=settings.heartbeat_seconds,
        rate=settings.heartbeat_rate,
        timeout=settings.heartbeat_timeout,
    )
    registry = Registry(
        runner,
        restarts,
        store,
        heartbeats,
        deliveries,
        roster,
        dispatcher,
        link,
        provisioners,
        events,
        metrics,
        crash_loop_limit=settings.crash_loop_limit,
        crash_loop_window=settings.crash_loop_window,
    )
    policy = AgentUrlPolicy(parse_networks(settings.agent_networks))
    access = Access(store, store, roster, runner, events, admin_token=admin, url_policy=policy)
    registry.agent_auth, registry.url_check = access.agent, policy.check
    for p in provisioners.values():
        p.on_exit(registry.on_exit)
    proxy = Proxy(
        deliveries,
        roster,
        client,
        link,
        bus,
        default_wait=settings.default_wait_seconds,
        forward_timeout=settings.forward_timeout,
        keep_alive=settings.stream_keep_alive,
        queue_limit=QueueLimit(settings.max_queue, settings.max_queue_age),
    )
    return Container(
        settings=settings,
        store=store,
        cache=cache,
        locks=locks,
        bus=bus,
        client=client,
        provisioners=provisioners,
        in_docker=in_docker,
        metrics=metrics,
        roster=roster,
        events=events,
        deliveries=deliveries,
        dispatcher=dispatcher,
        link=link,
        runner=runner,
        restarts=restarts,
        workspaces=Workspaces(
            store,
            deliveries,
            roster,
            runner,
            restarts,
            events,
            Handoff(bus, settings.replica, shared=not sole),
            access,
            store,
            sole=sole,
        ),
        registry=registry,
        heartbeats=heartbeats,
        proxy=proxy,
        access=access,
        idle=Idle(deliveries, roster, runner, restarts, owner=settings.replica),
        admin_token=admin,
        sole=sole,
    )
