"""The system under test, driven from outside: `berth serve` processes, workspaces created
through the HTTP API, external echo agents behind chaos proxies, PostgreSQL and Redis.

Everything here is process control and HTTP; nothing imports berth's internals, so the
tool keeps working whatever berth's code looks like inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.chaos.netproxy import Balancer, ChaosProxy

__all__ = ["Berth", "Cluster", "WsSpec", "free_port", "services_up"]

ECHO = [sys.executable, "-m", "berth.examples.echo"]
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}


class Berth:
    """One `berth serve` process (a replica, or the only server)."""

    def __init__(self, name: str, data_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "serve.log"

    async def start(self, timeout: float = 120.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [sys.executable, "-m", "berth", "serve", "--port", str(self.port)]
                + ["--data-dir", str(self.data_dir)],
                env={**_clean_env(), **self.env},
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await c.get(self.url + "/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        self.kill9()  # never leave an untracked berth behind (a retry starts a new one)
        raise RuntimeError(f"{self.name} is not ready after {timeout} s (see {self.log})")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.kill9()


@dataclass
class WsSpec:
    name: str
    runtime: str = "process"  # or "external": an echo agent the tool runs, behind a ChaosProxy
    max_concurrency: int = 1
    drain_seconds: float = 2.0
    limits: dict[str, Any] = field(default_factory=dict)  # max_queue, max_queue_age


@dataclass
class Workspace:
    spec: WsSpec
    id: str = ""
    state_dir: Path | None = None
    # external only: the agent process the tool runs, and the proxy berth reaches it through
    agent: subprocess.Popen[bytes] | None = None
    agent_port: int = 0
    proxy: ChaosProxy | None = None
    token: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Cluster:
    """One berth on SQLite, or `replicas` berths on a fresh PostgreSQL database and Redis."""

    def __init__(
        self,
        workdir: Path,
        specs: list[WsSpec],
        *,
        replicas: int = 0,
        postgres: str = "postgresql://postgres@127.0.0.1:5432/test",
        redis: str = "redis://127.0.0.1:6379/13",
        lease_seconds: float | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.specs = specs
        self.admin = "chaos-" + uuid.uuid4().hex
        self.replicated = replicas > 0
        self.tag = "chaos_" + uuid.uuid4().hex[:10]
        self.postgres_admin = postgres
        self.database_url = postgres.rsplit("/", 1)[0] + "/" + self.tag
        env = {
            "BERTH_ADMIN_TOKEN": self.admin,
            "BERTH_LOG_LEVEL": "info",
            # as root berth runs process agents as berth-agent, which may not reach this
            # interpreter (docs/security.md); the chaos run is about delivery, not that
            "BERTH_AGENT_USER": "inherit",
            **(extra_env or {}),
        }
        if lease_seconds is not None:
            env["BERTH_LEASE_SECONDS"] = str(lease_seconds)
        if self.replicated:
            env |= {
                "BERTH_DATABASE_URL": self.database_url,
                "BERTH_REDIS_URL": redis,
                "BERTH_REDIS_PREFIX": f"{self.tag}:",
            }
        n = max(1, replicas)
        self.berths = [
            Berth(f"berth-{i}", workdir / f"berth-{i}", {**env, "BERTH_REPLICA_ID": f"chaos-{i}"})
            for i in range(n)
        ]
        self.balancer: Balancer | None = None
        self.generation = 0  # bumped at every kill -9 of a berth
        self.workspaces: dict[str, Workspace] = {}

    # -- setup and teardown -------------------------------------------------------------
    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.replicated:
            await _pg(self.postgres_admin, f"CREATE DATABASE {self.tag}")
        for b in self.berths:
            await b.start()
        self.balancer = Balancer([b.port for b in self.berths])
        await self.balancer.start()
        async with self.client(0) as c:
            for spec in self.specs:
                await self._create(c, spec)
            for spec in self.specs:
                await self.wait_online(c, spec.name)

    async def close(self) -> None:
        for b in self.berths:
            with contextlib.suppress(Exception):
                await b.stop(30)
            b.kill9()
        for w in self.workspaces.values():
            self._kill_agent(w)
            if w.proxy is not None:
                await w.proxy.close()
        if self.balancer is not None:
            await self.balancer.close()
        for w in self.workspaces.values():  # a berth killed for good leaves its agents behind
            for pid in _agents_of(w.id):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if self.replicated:
            with contextlib.suppress(Exception):
                await _pg(self.postgres_admin, f"DROP DATABASE IF EXISTS {self.tag} WITH (FORCE)")

    def terminate(self) -> None:
        """Last resort, blocking, safe to call twice: stop every berth (SIGTERM, then
        kill -9), kill every agent of our workspaces, drop our database."""
        for b in self.berths:
            if b.alive and b.proc is not None:
                b.proc.send_signal(signal.SIGTERM)
        for b in self.berths:
            if b.proc is not None:
                try:
                    b.proc.wait(30)
                except subprocess.TimeoutExpired:
                    b.kill9()
        for w in self.workspaces.values():
            self._kill_agent(w)
            for pid in _agents_of(w.id):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        if self.replicated:
            sql = f"DROP DATABASE IF EXISTS {self.tag} WITH (FORCE)"
            t = threading.Thread(target=lambda: asyncio.run(_pg(self.postgres_admin, sql)))
            t.start()
            t.join(60)

    def client(self, i: int = 0, timeout: float = 30.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.berths[i % len(self.berths)].url,
            headers={"authorization": f"Bearer {self.admin}"},
            timeout=timeout,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    async def _create(self, c: httpx.AsyncClient, spec: WsSpec) -> None:
        body: dict[str, Any] = {
            "name": spec.name,
            "max_concurrency": spec.max_concurrency,
            "drain_seconds": spec.drain_seconds,
            **spec.limits,
        }
        w = Workspace(spec)
        if spec.runtime == "external":
            w.agent_port = free_port()
            w.proxy = ChaosProxy(w.agent_port)
            await w.proxy.start()
            body |= {"runtime": "external", "url": w.proxy.url}
        else:
            body["command"] = ECHO
            body["env"] = {"ECHO_LOG_BOOT": "1"}
        r = await c.post("/v1/workspaces", json=body)
        if r.status_code != 201:
            raise RuntimeError(f"creating {spec.name}: {r.status_code} {r.text}")
        doc = r.json()
        # an external agent registers with its agent credential; the caller's is for sends
        w.id, w.token = doc["id"], doc.get("agent_token", doc["token"])
        self.workspaces[spec.name] = w
        if spec.runtime == "external":
            w.state_dir = self.workdir / "agents" / spec.name / "state"
            self.start_agent(w)

    def start_agent(self, w: Workspace) -> None:
        """Start (again) the echo agent of an external workspace, behind its proxy."""
        assert w.state_dir is not None and w.proxy is not None and self.balancer is not None
        w.state_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **_clean_env(),
            "BERTH_URL": self.balancer.url,
            "BERTH_WORKSPACE_ID": w.id,
            "BERTH_WORKSPACE_NAME": w.spec.name,
            "BERTH_WORKSPACE_TOKEN": w.token,
            "BERTH_PORT": str(w.agent_port),
            "BERTH_STATE_DIR": str(w.state_dir),
            "BERTH_ADVERTISE_URL": w.proxy.url,
            "BERTH_DRAIN_SECONDS": str(w.spec.drain_seconds),
            "BERTH_MAX_CONCURRENCY": str(w.spec.max_concurrency),
            "ECHO_LOG_BOOT": "1",
        }
        with open(w.state_dir.parent / "agent.log", "ab") as log:
            w.agent = subprocess.Popen(
                ECHO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _kill_agent(self, w: Workspace) -> None:
        if w.agent is not None and w.agent.poll() is None:
            w.agent.kill()
            w.agent.wait()

    async def wait_online(self, c: httpx.AsyncClient, name: str, timeout: float = 90.0) -> dict:  # type: ignore[type-arg]
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                r = await c.get(f"/v1/workspaces/{name}")
                if r.status_code == 200:
                    last = r.json()
                    if last["status"] == "online":
                        w = self.workspaces[name]
                        if w.state_dir is None and last.get("state_dir"):
                            w.state_dir = Path(last["state_dir"])
                        return dict(last)
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{name} is not online after {timeout} s: {last}")

    # -- faults -------------------------------------------------------------------------
    async def kill_agent(self, c: httpx.AsyncClient, name: str) -> str:
        """kill -9 the workspace's agent; a description of what was killed."""
        w = self.workspaces[name]
        if w.spec.runtime == "external":
            if w.agent is None or w.agent.poll() is not None:
                raise RuntimeError("agent not running")
            pid = w.agent.pid
            self._kill_agent(w)
            await asyncio.sleep(0.5)
            self.start_agent(w)  # an external agent is restarted by whoever runs it: us
            return f"pid {pid} (restarted by the tool)"
        info = (await c.get(f"/v1/workspaces/{name}")).json()
        pid = info.get("pid")
        if not pid or info.get("status") != "online":
            raise RuntimeError(f"not online ({info.get('status')})")
        if not _is_agent_of(pid, w.id):
            raise RuntimeError(f"pid {pid} is not this workspace's agent")
        os.kill(pid, signal.SIGKILL)
        return f"pid {pid}"

    async def kill_berth(self, i: int, down: float) -> None:
        b = self.berths[i]
        self.generation += 1
        b.kill9()
        await asyncio.sleep(down)
        await self.start_berth(i)

    async def stop_berth(self, i: int, down: float) -> float:
        """SIGTERM berth i (a graceful stop), then start it again after `down` seconds:
        how long the stop took."""
        b = self.berths[i]
        self.generation += 1
        t0 = time.monotonic()
        await b.stop()
        took = time.monotonic() - t0
        await asyncio.sleep(down)
        await self.start_berth(i)
        return took

    async def start_berth(self, i: int, tries: int = 10) -> None:
        """Start berth i, again and again while it exits at once (e.g. its database is
        restarting: berth does not start without it)."""
        for attempt in range(tries):
            try:
                await self.berths[i].start()
                return
            except RuntimeError:
                if attempt == tries - 1:
                    raise
                await asyncio.sleep(3)

    async def ensure_berths(self) -> None:
        for i, b in enumerate(self.berths):
            if not b.alive:
                await self.start_berth(i)

    def agents_alive(self) -> None:
        for w in self.workspaces.values():
            if w.spec.runtime == "external" and (w.agent is None or w.agent.poll() is not None):
                self.start_agent(w)


def _agents_of(ws_id: str) -> list[int]:
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _is_agent_of(int(p.name), ws_id)
    ]


def _is_agent_of(pid: int, ws_id: str) -> bool:
    """Whether process `pid` is an agent of workspace `ws_id` (never kill a stranger)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"BERTH_WORKSPACE_ID={ws_id}".encode() in env


async def _pg(url: str, sql: str) -> None:
    import asyncpg

    for attempt in range(30):
        try:
            conn = await asyncpg.connect(url, timeout=5)
            break
        except (OSError, asyncpg.PostgresError):
            if attempt == 29:
                raise
            await asyncio.sleep(1)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def services_up() -> None:
    """Start PostgreSQL and Redis if they are down (the project's own script)."""
    subprocess.run(["bash", str(REPO / "scripts" / "services"), "start"], check=False, timeout=120)


def stop_redis() -> None:
    with socket.create_connection(("127.0.0.1", 6379), 2) as s:
        s.sendall(b"SHUTDOWN NOSAVE\r\n")
        with contextlib.suppress(OSError):
            s.recv(64)


def stop_postgres() -> None:
    ver = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(x) for x in v.split(".")])[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", ver, "main", "stop", "-m", "fast"],
        check=True,
        timeout=60,
        capture_output=True,
    )
