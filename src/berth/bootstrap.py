"""The one place that reads Settings and picks adapters; builds the object graph."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berth.adapters.agent_http import HttpAgentClient
from berth.adapters.memory_bus import MemoryBus, MemoryCache, MemoryLocks
from berth.adapters.process import ProcessProvisioner
from berth.adapters.sql.sqlite import SqliteStore
from berth.domain.delivery import DeliveryPolicy
from berth.metrics import Metrics
from berth.ports import AgentClient, Bus, Cache, Locks, Provisioner, Store
from berth.services.agent_link import AgentLink
from berth.services.dispatcher import Dispatcher
from berth.services.events import WORK_TOPIC, WS_TOPIC, Events
from berth.services.lifecycle import Runner
from berth.services.proxy import Proxy
from berth.services.registry import Registry
from berth.services.restart import RestartService
from berth.services.roster import Roster
from berth.services.waiters import Waiters
from berth.services.workspaces import Workspaces
from berth.settings import Settings

log = logging.getLogger("berth")
__all__ = ["Container", "admin_token", "build"]


@dataclass
class Container:
    settings: Settings
    store: Store
    cache: Cache
    locks: Locks
    bus: Bus
    client: AgentClient
    provisioners: dict[str, Provisioner]
    metrics: Metrics
    roster: Roster
    events: Events
    waiters: Waiters
    dispatcher: Dispatcher
    link: AgentLink
    runner: Runner
    restarts: RestartService
    workspaces: Workspaces
    registry: Registry
    proxy: Proxy
    admin_token: str
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def start(self) -> None:
        await self.store.migrate()
        await self.bus.start()  # subscribed across replicas before anything listens or publishes
        self.tasks += [
            asyncio.create_task(self.dispatcher.upkeep(), name="dispatcher-upkeep"),
            asyncio.create_task(self.waiters.listen(), name="waiters"),
            asyncio.create_task(
                self.registry.liveness(self.settings.heartbeat_seconds), name="liveness"
            ),
            asyncio.create_task(self._follow_replicas(), name="replicas"),
            asyncio.create_task(self._prune(), name="retention"),
        ]
        sqlite = self.store_is_sqlite
        await self.registry.recover(take_over_leases=sqlite)

    @property
    def store_is_sqlite(self) -> bool:
        return isinstance(self.store, SqliteStore)

    async def _follow_replicas(self) -> None:
        """Learn of other replicas' work and workspace changes."""
        sub = self.bus.subscribe(WORK_TOPIC, WS_TOPIC)
        try:
            async for topic, payload in sub:
                ws_id = payload.get("workspace_id")
                if not isinstance(ws_id, str):
                    continue
                if topic == WS_TOPIC:
                    await self.roster.refresh(ws_id)
                elif payload.get("replica") == self.dispatcher.owner:
                    continue  # our own announcement: this replica woke its loop already
                self.dispatcher.wake(ws_id)
        finally:
            await sub.aclose()

    async def _prune(self) -> None:
        """Retention and orphans, every `housekeeping_seconds`."""
        import time

        while True:
            await asyncio.sleep(self.settings.housekeeping_seconds)
            try:
                n = await self.store.prune_finished(
                    time.time() - self.settings.retention_hours * 3600
                )
                if n:
                    log.info("pruned %d finished deliveries", n)
                await self.roster.refresh()
                # agents whose workspace is gone (removed on another replica, or left by a
                # crash between a start and its record): only those of no workspace at all
                known = {w.id: w for w in self.roster.all()}
                for p in self.provisioners.values():
                    for name in await p.cleanup_orphans(known):
                        log.info("removed orphaned agent %s", name)
            except Exception:
                log.exception("retention pass failed")

    async def stop(self) -> None:
        await self.registry.shutdown()
        await self.restarts.close()
        await self.dispatcher.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
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


def _provisioners(settings: Settings) -> dict[str, Provisioner]:
    out: dict[str, Provisioner] = {
        "process": ProcessProvisioner(
            settings.data_path / "workspaces", instance=settings.instance
        ),
    }
    with contextlib.suppress(ImportError):
        from berth.adapters.docker import docker_provisioner

        dp = docker_provisioner(settings)
        if dp is not None:
            out["docker"] = dp
    return out


def _client(settings: Settings) -> AgentClient:
    if settings.agent_client == "httpx":
        from berth.adapters.agent_httpx import HttpxAgentClient

        return HttpxAgentClient()
    if settings.agent_client != "aiohttp":
        raise ValueError(f"agent_client must be aiohttp or httpx, not {settings.agent_client!r}")
    return HttpAgentClient()


def build(settings: Settings) -> Container:
    settings.data_path.mkdir(parents=True, exist_ok=True)
    store = _store(settings)
    cache, locks, bus = _shared(settings)
    client = _client(settings)
    provisioners = _provisioners(settings)
    metrics = Metrics()
    roster = Roster(store)
    owner = settings.replica
    events = Events(bus, owner)
    waiters = Waiters(store, bus)
    link = AgentLink(store, cache, client, in_docker=settings.running_in_docker())
    dispatcher = Dispatcher(
        store,
        client,
        roster,
        link,
        waiters,
        events,
        metrics,
        DeliveryPolicy(max_attempts=settings.max_attempts),
        owner=owner,
        lease_seconds=settings.lease_seconds,
        forward_timeout=settings.forward_timeout,
        sole=isinstance(store, SqliteStore),
    )
    runner = Runner(
        store,
        roster,
        provisioners,
        link,
        dispatcher,
        events,
        berth_url=settings.advertised_url,
        owner=owner,
        start_timeout=settings.start_timeout,
        stop_grace=settings.stop_grace_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
        instance=settings.instance,
    )
    restarts = RestartService(runner, locks, metrics)
    registry = Registry(
        runner,
        restarts,
        metrics,
        heartbeat_timeout=settings.heartbeat_timeout,
        crash_loop_limit=settings.crash_loop_limit,
        crash_loop_window=settings.crash_loop_window,
    )
    for p in provisioners.values():
        p.on_exit(registry.on_exit)
    proxy = Proxy(
        store,
        roster,
        dispatcher,
        waiters,
        client,
        link,
        metrics,
        bus,
        default_wait=settings.default_wait_seconds,
        forward_timeout=settings.forward_timeout,
        keep_alive=settings.stream_keep_alive,
    )
    return Container(
        settings=settings,
        store=store,
        cache=cache,
        locks=locks,
        bus=bus,
        client=client,
        provisioners=provisioners,
        metrics=metrics,
        roster=roster,
        events=events,
        waiters=waiters,
        dispatcher=dispatcher,
        link=link,
        runner=runner,
        restarts=restarts,
        workspaces=Workspaces(store, runner, restarts),
        registry=registry,
        proxy=proxy,
        admin_token=admin_token(settings),
    )
