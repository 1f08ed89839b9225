"""Issue #3: several `berth serve` replicas on one PostgreSQL and one Redis.

Real processes, real services: an external echo agent, sends spread over the replicas,
kill -9 of one replica mid-traffic; and a restart asked of two replicas at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import (
    BerthServer,
    create,
    executions,
    free_port,
    reply_text,
    send,
    send_body,
    wait_status,
)
from tests.services import Outage, require_postgres, require_redis

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]


@dataclass
class Cluster:
    replicas: list[BerthServer]
    database_url: str

    def clients(self) -> list[httpx.AsyncClient]:
        return [r.client() for r in self.replicas]


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
async def cluster(tmp_path: Path, call_failed: Callable[[], bool]) -> AsyncIterator[Cluster]:
    """Three replicas on one PostgreSQL database and one Redis. When the test fails, each
    replica's log (and the external agents') ends its report: CI keeps no files."""
    pg = require_postgres()
    redis = require_redis()
    name = f"berth_e2e_{uuid.uuid4().hex[:10]}"
    await _admin(pg, f"CREATE DATABASE {name}")
    db_url = pg.rsplit("/", 1)[0] + "/" + name
    env = {
        "BERTH_DATABASE_URL": db_url,
        "BERTH_REDIS_URL": redis,
        "BERTH_REDIS_PREFIX": f"t-{name}:",
        "BERTH_LEASE_SECONDS": "3",
    }
    replicas = [
        BerthServer(tmp_path / f"r{i}", env={**env, "BERTH_REPLICA_ID": f"replica-{i}"})
        for i in range(3)
    ]
    try:
        for r in replicas:
            r.start()
        yield Cluster(replicas, db_url)
    finally:
        for r in replicas:
            r.stop()
            r.kill9()
        if call_failed():
            for r in replicas:
                r.print_log_tail()
            for log in sorted(tmp_path.glob("agent-*/agent.log")):
                print(f"----- {log} (last 12000 chars) -----")
                print(log.read_text(errors="replace")[-12_000:])
        await _admin(pg, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def agent_port() -> int:
    return free_port()


class ExternalEcho:
    """An echo agent that runs outside berth and registers itself (docs/sdk.md)."""

    def __init__(self, state: Path, port: int, berth_url: str, ws_id: str, token: str) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BERTH_")},
            "BERTH_URL": berth_url,
            "BERTH_WORKSPACE_ID": ws_id,
            "BERTH_WORKSPACE_TOKEN": token,
            "BERTH_PORT": str(port),
            "BERTH_STATE_DIR": str(state),
        }
        state.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "berth.examples.echo"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(state.parent / "agent.log", "ab"),
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def external(tmp_path: Path) -> Iterator[list[ExternalEcho]]:
    agents: list[ExternalEcho] = []
    yield agents
    for a in agents:
        a.stop()


async def _external_workspace(
    c: httpx.AsyncClient,
    name: str,
    port: int,
    berth_url: str,
    tmp_path: Path,
    agents: list[ExternalEcho],
    **spec: object,
) -> dict:
    r = await c.post(
        "/v1/workspaces",
        json={"name": name, "runtime": "external", "url": f"http://127.0.0.1:{port}", **spec},
    )
    assert r.status_code == 201, r.text
    ws = r.json()
    agents.append(
        ExternalEcho(
            tmp_path / f"agent-{name}" / "state", port, berth_url, ws["id"], ws["agent_token"]
        )
    )
    await wait_status(c, name, "online")
    return ws


async def test_sends_over_three_replicas_survive_kill9_of_one(
    cluster: Cluster, tmp_path: Path, agent_port: int, external: list[ExternalEcho]
):
    a, b, c = cluster.replicas
    clients = cluster.clients()
    try:
        await _external_workspace(
            clients[0], "ext", agent_port, b.url, tmp_path, external, max_concurrency=4
        )
        for cl in clients[1:]:
            await wait_status(cl, "ext", "online")
        n = 120
        ids = [f"m-{i:03d}" for i in range(n)]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(n):
            queue.put_nowait(i)
        replies: dict[str, str] = {}
        cut: list[str] = []
        victim_killed = asyncio.Event()

        async def caller() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                mid = ids[i]
                text = f"sleep:0.3 {mid}" if i % 5 == 0 else mid
                replica = i % 3
                if replica == 2 and victim_killed.is_set():
                    replica = i % 2
                try:
                    r = await send(clients[replica], "ext", text, mid)
                    replies[mid] = reply_text(r.json())
                except httpx.TransportError:
                    cut.append(mid)  # the replica died under this caller

        async def killer() -> None:
            while len(replies) < n * 0.4:
                await asyncio.sleep(0.02)
            c.kill9()
            victim_killed.set()

        await asyncio.gather(killer(), *[caller() for _ in range(8)])
        assert c.proc is not None and c.proc.returncode == -9
        # A caller cut off by the dead replica sends again (same messageId) to a live one,
        # as any A2A client retrying would: it gets the one result, never a second run.
        for mid in cut:
            r = await send(
                clients[len(cut) % 2], "ext", mid if int(mid[2:]) % 5 else f"sleep:0.3 {mid}", mid
            )
            replies[mid] = reply_text(r.json())
        assert sorted(replies) == ids
        assert all(replies[m].endswith(m) and replies[m].startswith("echo: ") for m in ids)

        deliveries = (
            await clients[0].get("/v1/workspaces/ext/deliveries", params={"limit": 1000})
        ).json()
        assert len(deliveries["deliveries"]) == n
        assert {d["status"] for d in deliveries["deliveries"]} == {"done"}
        starts, dones = executions(external[0].state)
        # The agent lived through it all, so even work the dead replica had forwarded ran
        # once: its redelivery found the agent's stored result (dedupe by messageId).
        assert all(starts[m] == 1 and dones[m] == 1 for m in ids), {
            m: starts[m] for m in ids if starts[m] != 1
        }
    finally:
        for cl in clients:
            await cl.aclose()


async def test_a_restart_asked_of_two_replicas_at_once_runs_once(
    cluster: Cluster, tmp_path: Path, agent_port: int, external: list[ExternalEcho]
):
    a, b, _ = cluster.replicas
    clients = cluster.clients()
    try:
        await _external_workspace(
            clients[0], "twice", agent_port, a.url, tmp_path, external, drain_seconds=1
        )
        await wait_status(clients[1], "twice", "online")
        r1, r2 = await asyncio.gather(
            *[
                cl.post("/v1/workspaces/twice/restart", json={"reason": f"from replica {i}"})
                for i, cl in enumerate(clients[:2])
            ]
        )
        assert r1.status_code == r2.status_code == 202, (r1.text, r2.text)
        assert r1.json()["id"] == r2.json()["id"]
        assert sorted([r1.json()["joined"], r2.json()["joined"]]) == [False, True]
        records = (await clients[2].get("/v1/workspaces/twice/restarts")).json()["restarts"]
        assert [x["id"] for x in records if x["trigger"] == "api"] == [r1.json()["id"]]
        deadline = asyncio.get_running_loop().time() + 30
        while (
            rec := (await clients[1].get(f"/v1/workspaces/twice/restarts/{r1.json()['id']}")).json()
        )["phase"] not in ("done", "failed"):
            assert asyncio.get_running_loop().time() < deadline, rec
            await asyncio.sleep(0.1)
        assert rec["phase"] == "done"
        r = await send(clients[1], "twice", "after the restart")
        assert reply_text(r.json()) == "echo: after the restart"
    finally:
        for cl in clients:
            await cl.aclose()


async def test_a_caller_waiting_on_one_replica_is_answered_when_another_delivers(
    cluster: Cluster, tmp_path: Path, agent_port: int, external: list[ExternalEcho]
):
    """The workspace is paused on replica A; the send waits on B; resume on C delivers it."""
    clients = cluster.clients()
    try:
        await _external_workspace(
            clients[0], "wake", agent_port, cluster.replicas[0].url, tmp_path, external
        )
        assert (await clients[0].post("/v1/workspaces/wake/pause")).status_code == 200
        waiting = asyncio.create_task(send(clients[1], "wake", "held across replicas", "x-1"))
        await asyncio.sleep(1.0)
        assert not waiting.done()
        assert (await clients[2].post("/v1/workspaces/wake/resume")).status_code in (200, 202)
        r = await asyncio.wait_for(waiting, 30)
        assert reply_text(r.json()) == "echo: held across replicas"
    finally:
        for cl in clients:
            await cl.aclose()


async def test_deliveries_keep_working_while_redis_is_away(
    tmp_path: Path, agent_port: int, external: list[ExternalEcho]
):
    """Two replicas reach Redis through a proxy that goes away for a while: sends on both
    replicas are still answered (from the database, slower), and nothing is lost."""
    pg = require_postgres()
    outage = Outage(require_redis())
    await outage.up()
    name = f"berth_e2e_{uuid.uuid4().hex[:10]}"
    await _admin(pg, f"CREATE DATABASE {name}")
    env = {
        "BERTH_DATABASE_URL": pg.rsplit("/", 1)[0] + "/" + name,
        "BERTH_REDIS_URL": outage.url,
        "BERTH_REDIS_PREFIX": f"t-{name}:",
        "BERTH_LEASE_SECONDS": "3",
    }
    replicas = [
        BerthServer(tmp_path / f"r{i}", env={**env, "BERTH_REPLICA_ID": f"replica-{i}"})
        for i in range(2)
    ]
    clients: list[httpx.AsyncClient] = []
    try:
        for r in replicas:
            await asyncio.to_thread(r.start)  # the proxy runs on this loop: keep it turning
        clients = [r.client() for r in replicas]
        await _external_workspace(
            clients[0],
            "no-redis",
            agent_port,
            replicas[0].url,
            tmp_path,
            external,
            max_concurrency=2,
        )
        await outage.down()
        sends = [
            send(clients[i % 2], "no-redis", f"while redis is away {i}", f"nr-{i}")
            for i in range(20)
        ]
        replies = await asyncio.wait_for(asyncio.gather(*sends), 60)
        assert [reply_text(r.json()) for r in replies] == [
            f"echo: while redis is away {i}" for i in range(20)
        ]
        await outage.up()
        r = await send(clients[1], "no-redis", "redis is back", "nr-back")
        assert reply_text(r.json()) == "echo: redis is back"
        starts, _ = executions(external[0].state)
        assert all(starts[f"nr-{i}"] == 1 for i in range(20))
    finally:
        for cl in clients:
            await cl.aclose()
        for r in replicas:
            await asyncio.to_thread(r.stop)  # their shutdown goes through the proxy on this loop
            r.kill9()
        await outage.down()
        await _admin(pg, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def test_database_away_means_503_then_back_to_work(tmp_path: Path):
    """PostgreSQL goes away under a running berth: sends answer 503 (nothing accepted, so the
    caller retries), /readyz says why; when it is back, berth works again by itself."""
    pg = require_postgres()
    name = f"berth_e2e_{uuid.uuid4().hex[:10]}"
    await _admin(pg, f"CREATE DATABASE {name}")
    outage = Outage(pg.rsplit("/", 1)[0] + "/" + name)
    await outage.up()
    server = BerthServer(tmp_path / "r", env={"BERTH_DATABASE_URL": outage.url})
    try:
        await asyncio.to_thread(server.start)  # the proxy runs on this loop: keep it turning
        async with server.client() as c:
            await create(c, "pg-away")
            assert reply_text((await send(c, "pg-away", "before", "pa-1")).json()) == "echo: before"
            await outage.down()
            r = await send(c, "pg-away", "while away", "pa-2")
            assert r.status_code == 503, r.text
            assert (
                r.json()["error"]["data"]["reason"] == "store_unavailable" and r.json()["id"] == 1
            )
            ready = await c.get("/readyz")
            assert ready.status_code == 503 and "store" in ready.json()["problem"]
            await outage.up()
            deadline = asyncio.get_running_loop().time() + 20
            while (await c.get("/readyz")).status_code != 200:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.2)
            assert (
                reply_text((await send(c, "pg-away", "while away", "pa-2")).json())
                == "echo: while away"
            )
            info = await wait_status(c, "pg-away", "online")
            starts, _ = executions(info["state_dir"])
            assert starts["pa-1"] == 1 and starts["pa-2"] == 1
    finally:
        await asyncio.to_thread(server.stop)  # its shutdown goes through the proxy on this loop
        server.kill9()
        await outage.down()
        await _admin(pg, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _agent_pids(ws_id: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"BERTH_WORKSPACE_ID={ws_id}".encode() in env:
            out.append(int(entry.name))
    return out


async def test_a_process_workspace_is_run_by_its_owner_only(cluster: Cluster):
    """Replica 0 runs a process workspace; replica 1 routes to it but never starts, stops or
    duplicates it, also when replica 1 itself stops and starts again."""
    clients = cluster.clients()
    try:
        ws = await clients[0].post(
            "/v1/workspaces",
            json={"name": "owned", "command": [sys.executable, "-m", "berth.examples.echo"]},
        )
        assert ws.status_code == 201
        ws_id = ws.json()["id"]
        info = await wait_status(clients[0], "owned", "online")
        assert _agent_pids(ws_id) == [info["pid"]]
        assert (
            reply_text((await send(clients[1], "owned", "via the other replica")).json())
            == "echo: via the other replica"
        )
        await asyncio.to_thread(cluster.replicas[1].stop)  # drains and stops only what it owns
        await asyncio.to_thread(cluster.replicas[1].start)
        again = await wait_status(clients[1], "owned", "online")
        assert again["pid"] == info["pid"] and _agent_pids(ws_id) == [info["pid"]]
        assert again["restart_count"] == 0
        assert (
            reply_text((await send(clients[1], "owned", "still the same agent")).json())
            == "echo: still the same agent"
        )
    finally:
        for cl in clients:
            await cl.aclose()


async def _wait_restart(c: httpx.AsyncClient, ref: str, restart_id: str) -> dict:
    deadline = asyncio.get_running_loop().time() + 60
    while (rec := (await c.get(f"/v1/workspaces/{ref}/restarts/{restart_id}")).json())[
        "phase"
    ] not in ("done", "failed"):
        assert asyncio.get_running_loop().time() < deadline, rec
        await asyncio.sleep(0.1)
    return rec


async def test_lifecycle_asked_of_a_non_owner_runs_on_the_owner(cluster: Cluster):
    """Finding 2 of docs/reliability.md: a restart, pause or resume sent to a replica that
    does not run a process workspace is run by its owner (one agent, never two); with the
    owner down, the other replicas refuse with 503 naming it and start nothing."""
    clients = cluster.clients()
    ws_id = ""
    try:
        ws = await clients[0].post(
            "/v1/workspaces",
            json={
                "name": "owned",
                "command": [sys.executable, "-m", "berth.examples.echo"],
                "drain_seconds": 1,
            },
        )
        assert ws.status_code == 201
        ws_id = ws.json()["id"]
        info = await wait_status(clients[0], "owned", "online")
        assert info["owner"] == "replica-0" and _agent_pids(ws_id) == [info["pid"]]
        # the creation's own cycle ends just after the workspace is online; a restart asked
        # before that joins it (docs/api.md), so the one asked here waits for its end
        (created,) = (await clients[0].get("/v1/workspaces/owned/restarts")).json()["restarts"]
        assert (await _wait_restart(clients[0], "owned", created["id"]))["phase"] == "done"

        r = await clients[1].post("/v1/workspaces/owned/restart", json={"reason": "via r1"})
        assert r.status_code == 202, r.text
        assert r.json()["joined"] is False and r.json()["reason"] == "via r1"
        assert (await _wait_restart(clients[2], "owned", r.json()["id"]))["phase"] == "done"
        after = await wait_status(clients[0], "owned", "online")
        while after["restart_count"] != 1:  # counted by the owner, as the cycle's last step
            await asyncio.sleep(0.05)
            after = (await clients[0].get("/v1/workspaces/owned")).json()
        assert after["owner"] == "replica-0"
        assert after["pid"] != info["pid"] and _agent_pids(ws_id) == [after["pid"]]
        assert after["state_dir"] == info["state_dir"]  # the owner's data dir, not replica 1's

        paused = await clients[2].post("/v1/workspaces/owned/pause")
        assert paused.status_code == 200, paused.text
        assert paused.json()["workspace"]["status"] == "paused" and _agent_pids(ws_id) == []
        resumed = await clients[1].post("/v1/workspaces/owned/resume")
        assert resumed.status_code in (200, 202), resumed.text
        again = await wait_status(clients[1], "owned", "online")
        assert again["owner"] == "replica-0" and _agent_pids(ws_id) == [again["pid"]]
        r = await send(clients[2], "owned", "after all that")
        assert reply_text(r.json()) == "echo: after all that"

        # a message through another replica wakes a suspended workspace on its owner only
        # (finding 6): with the owner frozen, the other replica leaves it suspended
        sleepy = await clients[0].post(
            "/v1/workspaces",
            json={
                "name": "sleepy",
                "command": [sys.executable, "-m", "berth.examples.echo"],
                "idle_suspend_seconds": 1,
            },
        )
        assert sleepy.status_code == 201
        first = await wait_status(clients[0], "sleepy", "online")
        await wait_status(clients[0], "sleepy", "suspended", timeout=30)
        await wait_status(clients[1], "sleepy", "suspended")
        owner_proc = cluster.replicas[0].proc
        assert owner_proc is not None
        owner_proc.send_signal(signal.SIGSTOP)
        try:
            queued = await send(clients[1], "sleepy", "wake up", "wake-1", wait=0)
            assert queued.status_code == 202, queued.text
            await asyncio.sleep(2)
            assert (await clients[1].get("/v1/workspaces/sleepy")).json()["status"] == "suspended"
        finally:
            owner_proc.send_signal(signal.SIGCONT)
        r = await send(clients[1], "sleepy", "wake up", "wake-1", wait=30)
        assert reply_text(r.json()) == "echo: wake up"
        woken = (await clients[0].get("/v1/workspaces/sleepy")).json()
        assert woken["owner"] == "replica-0" and woken["state_dir"] == first["state_dir"]
        assert (await clients[0].delete("/v1/workspaces/sleepy")).status_code == 200

        cluster.replicas[0].kill9()  # its agent lives on, waiting for its owner to return
        refused = await clients[1].post("/v1/workspaces/owned/restart", json={})
        assert refused.status_code == 503, refused.text
        err = refused.json()["error"]
        assert err["code"] == "owner_unavailable" and "replica-0" in err["message"]
        assert refused.headers.get("retry-after")
        assert _agent_pids(ws_id) == [again["pid"]]
        assert (await clients[2].delete("/v1/workspaces/owned")).status_code == 503
        assert _agent_pids(ws_id) == [again["pid"]]
    finally:
        for cl in clients:
            await cl.aclose()
        for pid in _agent_pids(ws_id) if ws_id else []:  # the killed owner's agent
            os.kill(pid, 9)


async def test_a_rotated_or_revoked_credential_is_refused_by_every_replica_once_answered(
    cluster: Cluster,
) -> None:
    """Each replica keeps the credentials it authenticated with (services/credential_cache):
    a rotation or revocation on one replica answers only once no replica takes the old
    secret any more."""

    async def status(c: httpx.AsyncClient, secret: str) -> int:
        r = await c.post(
            "/v1/workspaces/nobody/a2a",
            json=send_body("x"),
            headers={"authorization": f"Bearer {secret}", "a2a-version": "1.0"},
        )
        return r.status_code  # 404: authenticated (no such workspace); 401: refused

    c0, c1, c2 = cluster.clients()
    async with c0, c1, c2:
        r = await c0.post("/v1/credentials", json={"name": "ci"})
        assert r.status_code == 201, r.text
        old = r.json()["secret"]
        for c in (c1, c2):
            assert [await status(c, old) for _ in range(3)] == [404] * 3  # kept there
        r = await c0.post("/v1/credentials/caller:ci/rotate")
        assert r.status_code == 200, r.text
        new = r.json()["secret"]
        for c in (c1, c2, c0):
            assert await status(c, old) == 401
            assert await status(c, new) == 404
        r = await c0.post("/v1/credentials/caller:ci/revoke")
        assert r.status_code == 200, r.text
        for c in (c1, c2, c0):
            assert await status(c, new) == 401
