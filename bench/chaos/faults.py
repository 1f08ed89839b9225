"""Fault injectors: each one a loop that injects its kind of fault at random moments,
paced to reach its target count by the deadline, and records every fault it injected.

Kinds: `restart` (graceful, through the API), `agent_kill` (kill -9 of a workspace's
agent), `berth_kill` / `replica_kill` (kill -9 of a `berth serve`, started again after a
moment), `replica_stop` (SIGTERM of a `berth serve`: it drains, lets its forwards run for
its shutdown grace and gives its leases back; started again after a moment), `redis_restart`, `pg_restart` (the service stopped for a few seconds, then started
again with scripts/services), `net` (drops, delays or resets on an external workspace's
proxy between berth and its agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bench.chaos import cluster as cl
from bench.chaos.history import History

__all__ = ["KINDS", "Faults"]

KINDS = (
    "restart",
    "agent_kill",
    "berth_kill",
    "replica_kill",
    "replica_stop",
    "redis_restart",
    "pg_restart",
    "net",
)
AGENT_KILL_SPACING = 30.0  # per workspace: 5 crashes in 120 s would end it `failed` by design


class Faults:
    def __init__(
        self,
        history: History,
        cluster: cl.Cluster,
        targets: dict[str, int],
        *,
        seed: int | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        unknown = set(targets) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
        self.h = history
        self.cluster = cluster
        self.targets = {k: n for k, n in targets.items() if n > 0}
        self.done: dict[str, int] = dict.fromkeys(self.targets, 0)
        self.rng = random.Random(seed)
        self.log = log
        self.berth_down = asyncio.Event()  # set while a berth is being killed and restarted
        self._last_kill: dict[str, float] = {}
        self._busy: set[str] = set()  # workspaces a restart is running on
        self._killing: set[str] = set()
        self._pending: dict[str, int] = dict.fromkeys(self.targets, 0)
        names = list(cluster.workspaces)
        self.workspaces = names
        self.external = [n for n, w in cluster.workspaces.items() if w.spec.runtime == "external"]

    def reached(self) -> bool:
        return all(self.done[k] >= n for k, n in self.targets.items())

    async def run(self, deadline: float) -> None:
        """Inject until every target is reached or the deadline passes."""
        loops: list[Awaitable[None]] = []
        for kind in self.targets:
            workers = {"restart": len(self.workspaces), "agent_kill": 2}.get(kind, 1)
            for _ in range(workers):
                loops.append(self._loop(kind, deadline, workers))
        healer = asyncio.create_task(self._heal_failed(deadline))
        try:
            await asyncio.gather(*loops)
        finally:
            healer.cancel()

    async def _heal_failed(self, deadline: float) -> None:
        """What an operator would do: restart a workspace berth gave up on (`failed`, e.g. an
        agent that did not register within BERTH_START_TIMEOUT on a loaded machine).
        Each is recorded as a `heal`, with berth's reason."""
        while time.time() < deadline:
            await asyncio.sleep(5)
            with contextlib.suppress(_Skip, httpx.HTTPError, ValueError, KeyError):
                async with await self._client() as c:
                    for w in (await c.get("/v1/workspaces")).json()["workspaces"]:
                        if w["status"] != "failed":
                            continue
                        t0 = time.time()
                        r = await c.post(
                            f"/v1/workspaces/{w['name']}/restart", json={"reason": "chaos heal"}
                        )
                        self.h.fault(
                            "heal",
                            w["name"],
                            t0,
                            ok=r.status_code == 202,
                            detail=f"was failed: {w.get('last_error')}"[:300],
                        )

    async def _loop(self, kind: str, deadline: float, workers: int) -> None:
        inject = getattr(self, "_" + kind)
        last = 0.0
        while time.time() < deadline and self._wanted(kind):
            left = max(1, self.targets[kind] - self.done[kind])
            # aim to be done by 60 % of the time left: slow faults (a restart under load takes
            # seconds) eat the margin, and the run ends as soon as every target is reached
            gap = (deadline - time.time()) * 0.6 / left * workers - last
            wake = time.time() + max(0.05, gap * self.rng.uniform(0.3, 1.2))
            while time.time() < min(wake, deadline) and self._wanted(kind):
                await asyncio.sleep(min(1.0, wake - time.time()))  # the others may finish it
            if time.time() >= deadline or not self._wanted(kind):
                return
            t0 = time.time()
            self._pending[kind] += 1
            try:
                target, detail = await inject()
            except _Skip:
                last = 0.0
                continue
            except Exception as e:  # a fault that could not be injected: recorded, not counted
                self.h.fault(kind, "?", t0, ok=False, detail=f"{type(e).__name__}: {e}"[:300])
                last = time.time() - t0
                continue
            finally:
                self._pending[kind] -= 1
            last = time.time() - t0
            self.done[kind] += 1
            self.h.fault(kind, target, t0, detail=detail)

    def _wanted(self, kind: str) -> bool:
        """Whether one more of `kind` is needed (counting those being injected now)."""
        return self.done[kind] + self._pending[kind] < self.targets[kind]

    def _pick(self, names: list[str], busy_ok: bool = False) -> str:
        free = [n for n in names if busy_ok or n not in self._busy]
        if not free:
            raise _Skip
        return self.rng.choice(free)

    async def _client(self) -> httpx.AsyncClient:
        alive = [i for i, b in enumerate(self.cluster.berths) if b.alive]
        if not alive:
            raise _Skip
        return self.cluster.client(self.rng.choice(alive), timeout=30)

    # -- the faults -----------------------------------------------------------------------
    async def _restart(self) -> tuple[str, str]:
        name = self._pick(self.workspaces)
        self._busy.add(name)
        try:
            async with await self._client() as c:
                gen = self.cluster.generation
                r = await c.post(f"/v1/workspaces/{name}/restart", json={"reason": "chaos"})
                if r.status_code != 202:
                    raise RuntimeError(f"{name}: HTTP {r.status_code} {r.text[:150]}")
                if r.json().get("joined"):
                    raise RuntimeError(f"{name}: joined a {r.json().get('trigger')} restart")
                rid = r.json()["id"]
                rec = await _wait_restart(c, name, rid, lambda: self.cluster.generation != gen)
        finally:
            self._busy.discard(name)
        rep = rec.get("drain_report") or {}
        detail = "interrupted by a berth kill, record left at " if rec.get("interrupted") else ""
        detail += (
            f"{rec.get('phase')} drained={rep.get('drained')} unfinished={rep.get('unfinished')}"
        )
        if rec.get("phase") != "done":
            detail += f" error={rec.get('error')}"
        return name, detail

    async def _agent_kill(self) -> tuple[str, str]:
        now = time.time()
        ready = [n for n in self.workspaces if now - self._last_kill.get(n, 0) > AGENT_KILL_SPACING]
        # a kill may land in the middle of a restart: that is a fault too
        name = self._pick([n for n in ready if n not in self._killing], busy_ok=True)
        self._killing.add(name)
        try:
            async with await self._client() as c:
                what = await self.cluster.kill_agent(c, name)
            self._last_kill[name] = time.time()
            return name, what
        finally:
            self._killing.discard(name)

    async def _berth_kill(self) -> tuple[str, str]:
        return await self._kill_a_berth()

    async def _replica_kill(self) -> tuple[str, str]:
        return await self._kill_a_berth()

    async def _replica_stop(self) -> tuple[str, str]:
        i = self.rng.randrange(len(self.cluster.berths))
        down = self.rng.uniform(0.2, 2.0)
        self.berth_down.set()
        try:
            took = await self.cluster.stop_berth(i, down)
        finally:
            self.berth_down.clear()
        return "*", f"{self.cluster.berths[i].name} stopped in {took:.1f}s, down {down:.1f}s"

    async def _kill_a_berth(self) -> tuple[str, str]:
        i = self.rng.randrange(len(self.cluster.berths))
        down = self.rng.uniform(0.2, 2.0)
        self.berth_down.set()
        try:
            await self.cluster.kill_berth(i, down)
        finally:
            self.berth_down.clear()
        return "*", f"{self.cluster.berths[i].name} down {down:.1f}s"

    async def _redis_restart(self) -> tuple[str, str]:
        down = self.rng.uniform(1.0, 5.0)
        cl.stop_redis()
        await asyncio.sleep(down)
        await asyncio.to_thread(cl.services_up)
        return "redis", f"down {down:.1f}s"

    async def _pg_restart(self) -> tuple[str, str]:
        down = self.rng.uniform(1.0, 5.0)
        await asyncio.to_thread(cl.stop_postgres)
        await asyncio.sleep(down)
        await asyncio.to_thread(cl.services_up)
        return "postgres", f"down {down:.1f}s"

    async def _net(self) -> tuple[str, str]:
        name = self._pick(self.external)
        proxy = self.cluster.workspaces[name].proxy
        assert proxy is not None
        mode = self.rng.choice(["drop", "delay", "reset"])
        if mode == "reset":
            return name, f"reset {proxy.reset()} connection(s)"
        seconds = self.rng.uniform(1.0, 5.0)
        proxy.mode, proxy.delay = mode, self.rng.uniform(0.1, 1.5)
        try:
            await asyncio.sleep(seconds)
        finally:
            proxy.mode = "pass"
        extra = f" of {proxy.delay:.2f}s a chunk" if mode == "delay" else ""
        return name, f"{mode}{extra} for {seconds:.1f}s"


class _Skip(Exception):
    """Nothing to inject on right now (every candidate busy, or berth down)."""


async def _wait_restart(
    c: httpx.AsyncClient, name: str, rid: str, interrupted: Callable[[], bool]
) -> dict[str, Any]:
    """The restart record once finished; if the berth running it was killed meanwhile, the
    record as that berth left it (its phase stays where the kill caught it)."""
    deadline = time.monotonic() + 120
    rec: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if interrupted():
            await asyncio.sleep(2)  # let it come back, then read what is left
            with contextlib.suppress(httpx.HTTPError, ValueError):
                rec = (await c.get(f"/v1/workspaces/{name}/restarts/{rid}")).json()
            rec["interrupted"] = True
            return rec
        with contextlib.suppress(httpx.HTTPError, ValueError):
            rec = (await c.get(f"/v1/workspaces/{name}/restarts/{rid}")).json()
            if rec.get("phase") in ("done", "failed"):
                return rec
        await asyncio.sleep(0.1)
    return rec
