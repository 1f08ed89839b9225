"""Docker workspaces under a real `berth serve`: restarts under load, crashes and stops from
outside berth (`docker kill`, `docker stop`), berth itself in a container, and the start and
restart timings of the docker runtime next to the process runtime.

The process-runtime versions of the first tests are tests/e2e/test_restart_under_load.py and
tests/e2e/test_crashes.py. berth runs on the host listening on all addresses (so containers
reach it at host.docker.internal to register); the echo agent's executions.log is read from
its state volume on the host (the volume's Mountpoint; these tests run on the engine's host).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth.adapters.docker import container_name, volume_name
from berth.settings import Settings
from tests.docker.conftest import IMAGE, NETWORK, ROOT, _unavailable, remove_instance
from tests.e2e.harness import (
    ADMIN,
    BerthServer,
    create,
    executions,
    free_port,
    reply_text,
    send,
    wait_deliveries_final,
    wait_status,
)

# The engine fixture may build the images on a first run: allow for it, as the provisioner tests do.
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]

os.environ.setdefault("OTEL_INSTRUMENTATION_A2A_SDK_ENABLED", "false")


# helpers ---------------------------------------------------------------------------------
@pytest.fixture
def docker_berth(docker_engine: Any, tmp_path: Path) -> Iterator[BerthServer]:
    """A real `berth serve` on the host with the docker runtime, listening on all addresses
    (containers reach it through the bridge gateway); its containers and volumes are
    removed afterwards."""
    data = tmp_path / "berth"
    server = BerthServer(
        data, args=["--host", "0.0.0.0"], env={"BERTH_DOCKER_NETWORK": NETWORK}
    ).start()
    instance = Settings(data_dir=str(data)).instance  # what berth labels its containers with
    try:
        yield server
    finally:
        server.stop()
        server.kill9()
        remove_instance(docker_engine, instance)


def state_dir(client: Any, ws_id: str, tmp: Path) -> Path:
    """The workspace's state volume (its BERTH_STATE_DIR) as a host path: its Mountpoint when
    this process can read it (on the engine's host, as root), else a copy of executions.log
    read through a throwaway container."""
    mount = Path(client.volumes.get(volume_name(ws_id)).attrs["Mountpoint"])
    with contextlib.suppress(OSError):
        (mount / "executions.log").read_bytes()
        return mount
    out = client.containers.run(
        IMAGE,
        ["cat", "/state/executions.log"],
        remove=True,
        volumes={volume_name(ws_id): {"bind": "/state", "mode": "ro"}},
    )
    copy = tmp / f"state-{ws_id[:12]}"
    copy.mkdir(parents=True, exist_ok=True)
    (copy / "executions.log").write_bytes(out)
    return copy


def container_of(client: Any, ws_id: str) -> Any:
    return client.containers.get(container_name(ws_id))


async def restart(
    c: httpx.AsyncClient, ref: str, reason: str, timeout: float = 60.0
) -> dict[str, Any]:
    """Restart through the API and wait for the cycle to end; the final restart record."""
    r = await c.post(f"/v1/workspaces/{ref}/restart", json={"reason": reason})
    assert r.status_code == 202, r.text
    rec: dict[str, Any] = r.json()
    assert not rec["joined"], f"the restart joined a cycle already running: {rec}"
    return await wait_restart(c, ref, rec["id"], timeout)


async def wait_restart(
    c: httpx.AsyncClient, ref: str, rid: str, timeout: float = 60.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        rec: dict[str, Any] = (await c.get(f"/v1/workspaces/{ref}/restarts/{rid}")).json()
        if rec.get("phase") in ("done", "failed"):
            return rec
        if time.monotonic() > deadline:
            raise AssertionError(f"restart {rid} of {ref} not finished after {timeout} s: {rec}")
        await asyncio.sleep(0.05)


async def wait_crash_handled(
    c: httpx.AsyncClient,
    ref: str,
    crashes: int,
    old_container: str | None,
    client: Any,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Until the workspace counted `crashes` crashes and is online again in a new container."""
    deadline = time.monotonic() + timeout
    now: dict[str, Any] = {}
    while time.monotonic() < deadline:
        now = (await c.get(f"/v1/workspaces/{ref}")).json()
        if now["crash_count"] >= crashes and now["status"] == "online":
            with contextlib.suppress(Exception):
                if container_of(client, now["id"]).id != old_container:
                    return now
        await asyncio.sleep(0.1)
    raise AssertionError(f"{ref} was not restarted by berth within {timeout} s: {now}")


def no_docker_restart_policy(client: Any, cid: str) -> None:
    policy = client.api.inspect_container(cid)["HostConfig"]["RestartPolicy"]
    assert policy["Name"] in ("", "no"), f"Docker restarts this container itself: {policy}"


def phase_seconds(rec: dict[str, Any]) -> dict[str, float]:
    return {p["phase"]: float(p["seconds"] or 0.0) for p in rec["phases"]}


def container_to_registered(client: Any, ws_id: str, rec: dict[str, Any]) -> float:
    """Seconds from the engine starting the workspace's current container to berth seeing
    its agent registered (the end of the restart record's `starting` phase)."""
    started = docker_time(container_of(client, ws_id).attrs["State"]["StartedAt"])
    end = next(p["ended_at"] for p in rec["phases"] if p["phase"] == "starting")
    return float(end) - started


def docker_time(text: str) -> float:
    """An RFC 3339 timestamp of the engine (nanoseconds) as a Unix time."""
    head, _, frac = text.rstrip("Z").partition(".")
    frac = "".join(ch for ch in frac if ch.isdigit())[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{head}.{frac}+00:00").timestamp()


# 1. restart under load -----------------------------------------------------------------------
async def test_restart_under_load_every_caller_answered_every_message_once(
    docker_berth: BerthServer, docker_engine: Any, tmp_path: Path
) -> None:
    """Two docker echo workspaces, 8 concurrent callers (112 sends, some `sleep:0.4`), each
    workspace restarted three times through the API during the traffic: every caller gets
    its echo; each messageId is started and done exactly once (in flight at a restart: it
    finishes inside the drain; sent during one: it waits)."""
    t_test = time.monotonic()
    async with docker_berth.client() as c:
        a, b = await asyncio.gather(
            create(
                c,
                "dload-a",
                runtime="docker",
                image=IMAGE,
                command=None,
                max_concurrency=2,
                drain_seconds=10,
            ),
            create(
                c,
                "dload-b",
                runtime="docker",
                image=IMAGE,
                command=None,
                max_concurrency=1,
                drain_seconds=10,
            ),
        )
        targets = ["dload-a", "dload-b"]
        sent: dict[str, str] = {}
        first_containers = {ws["id"]: container_of(docker_engine, ws["id"]).id for ws in (a, b)}

        async def caller(n: int) -> None:
            rnd = random.Random(n)
            for i in range(14):
                text = f"{'sleep:0.4 ' if rnd.random() < 0.15 else ''}c{n}-{i}"
                ws = targets[(n + i) % 2]
                mid = f"{ws}-c{n}-{i}"
                r = await send(c, ws, text, mid)
                assert r.status_code == 200, r.text
                assert reply_text(r.json()) == f"echo: {text}", r.text
                assert r.headers["x-berth-message-id"] == mid
                sent[mid] = ws

        async def restart_three_times(ws: str) -> list[dict[str, Any]]:
            done = []
            for k in range(3):
                await asyncio.sleep(0.5)
                done.append(await restart(c, ws, f"load test {k}"))
            return done

        t0 = time.monotonic()
        results = await asyncio.gather(
            *(caller(n) for n in range(8)), *(restart_three_times(w) for w in targets)
        )
        t_traffic = time.monotonic() - t0
        assert len(sent) == 8 * 14
        records: list[dict[str, Any]] = [r for group in results[-2:] if group for r in group]
        assert [r["phase"] for r in records] == ["done"] * 6, records
        assert all(r["drain_report"]["mode"] == "agent" for r in records), records
        assert all(r["drain_report"]["unfinished"] == [] for r in records), records
        completed = sum(len(r["drain_report"]["completed"]) for r in records)
        assert completed >= 1, "no restart hit in-flight work"

        for ws in (a, b):
            info = (await c.get(f"/v1/workspaces/{ws['name']}")).json()
            assert info["restart_count"] == 3 and info["crash_count"] == 0, info
            assert info["state_dir"] == volume_name(ws["id"])
            cid = container_of(docker_engine, ws["id"]).id
            assert cid != first_containers[ws["id"]], "a restart must replace the container"
            no_docker_restart_policy(docker_engine, cid)
            starts, dones = executions(state_dir(docker_engine, ws["id"], tmp_path))
            mine = [m for m, w in sent.items() if w == ws["name"]]
            assert all(starts[m] == 1 for m in mine), {m: starts[m] for m in mine if starts[m] != 1}
            assert all(dones[m] == 1 for m in mine), {m: dones[m] for m in mine if dones[m] != 1}
        cycles = [r["seconds"] for r in records]
        by_phase = {
            ph: statistics.median(phase_seconds(r).get(ph, 0.0) for r in records)
            for ph in ("draining", "stopping", "starting")
        }
        print(
            "\n[docker] restart under load, median by phase: "
            + ", ".join(f"{ph} {v:.2f} s" for ph, v in by_phase.items())
        )
        print(
            f"[docker] restart under load: 112 sends, 6 restarts in {t_traffic:.1f} s "
            f"(cycles {min(cycles):.2f}-{max(cycles):.2f} s, {completed} messages finished inside "
            f"drains); test {time.monotonic() - t_test:.1f} s"
        )


# 2. docker kill from outside ---------------------------------------------------------------
async def test_docker_kill_with_work_in_flight_and_queued(
    docker_berth: BerthServer, docker_engine: Any, tmp_path: Path
) -> None:
    """`docker kill` of the container (not through berth) with one delivery in flight and
    more queued: berth's restart policy (not Docker's) starts a new container and every
    delivery ends done; the one cut mid-execution is forwarded again."""
    async with docker_berth.client() as c:
        ws = await create(
            c,
            "dkilled",
            runtime="docker",
            image=IMAGE,
            command=None,
            max_concurrency=1,
            drain_seconds=5,
        )
        old = container_of(docker_engine, ws["id"])
        no_docker_restart_policy(docker_engine, old.id)
        ids = []
        for i in range(6):
            r = await send(c, "dkilled", f"sleep:1 m{i}", f"dk-{i}", wait=0)
            assert r.status_code == 202, r.text
            ids.append(r.json()["delivery_id"])
        await asyncio.sleep(0.5)  # the first is in flight, the rest queued
        info = (await c.get("/v1/workspaces/dkilled")).json()
        assert info["in_flight"] == 1 and info["queue_depth"] >= 3, info
        cut = (await c.get("/v1/workspaces/dkilled/deliveries?status=in_flight")).json()[
            "deliveries"
        ][0]

        t0 = time.monotonic()
        await asyncio.to_thread(old.kill)
        final = await wait_deliveries_final(c, ids, timeout=60)
        t_final = time.monotonic() - t0
        assert [d["status"] for d in final] == ["done"] * 6, final
        redelivered = next(d for d in final if d["id"] == cut["id"])
        assert redelivered["forwards"] == 2 and redelivered["attempts"] == 1, redelivered
        assert all(d["attempts"] == 0 for d in final if d["id"] != cut["id"]), final

        back = await wait_crash_handled(c, "dkilled", 1, old.id, docker_engine)
        assert back["crash_count"] == 1 and back["restart_count"] == 1, back
        assert "137" in (back["last_error"] or ""), back  # SIGKILL, seen in the engine's event
        new = container_of(docker_engine, ws["id"])
        assert new.id != old.id and new.status == "running"
        no_docker_restart_policy(docker_engine, new.id)
        assert not docker_engine.containers.list(all=True, filters={"id": old.id}), (
            "berth left the killed container behind"
        )
        policy = (await c.get("/v1/workspaces/dkilled/restarts")).json()["restarts"]
        assert any(r["trigger"] == "policy" and r["phase"] == "done" for r in policy), policy

        starts, dones = executions(state_dir(docker_engine, ws["id"], tmp_path))
        assert all(dones[f"dk-{i}"] == 1 for i in range(6)), dones
        assert starts[cut["message_id"]] == 2, starts  # cut mid-execution by the kill: ran again
        r = await send(c, "dkilled", "after kill", "dk-after")
        assert reply_text(r.json()) == "echo: after kill"
        print(
            f"\n[docker] docker kill -> all 6 deliveries done {t_final:.2f} s "
            f"(new container {new.short_id}, old {old.short_id})"
        )


# 3. docker stop from outside ---------------------------------------------------------------
async def test_docker_stop_from_outside_drains_then_berth_restarts(
    docker_berth: BerthServer, docker_engine: Any, tmp_path: Path
) -> None:
    """`docker stop` (SIGTERM, 10 s grace) issued outside berth while a `sleep:2` message is
    in flight: the SDK drains, the work finishes inside the grace period (the caller gets its
    echo, executed once, exit code 0), then berth restarts the workspace by its policy. A
    message sent while the agent drains is refused by it (DRAINING), held by berth and
    answered by the new container, executed once."""
    async with docker_berth.client() as c:
        ws = await create(
            c,
            "dstopped",
            runtime="docker",
            image=IMAGE,
            command=None,
            max_concurrency=2,
            drain_seconds=10,
        )
        old = container_of(docker_engine, ws["id"])
        caller = asyncio.ensure_future(send(c, "dstopped", "sleep:2 slow", "ds-1"))
        await asyncio.sleep(0.6)
        info = (await c.get("/v1/workspaces/dstopped")).json()
        assert info["in_flight"] == 1, info
        # Wait for the exit in a thread of its own from before the stop: berth removes the
        # stopped container soon after, when its restart policy starts a new one.
        exit_wait = asyncio.ensure_future(asyncio.to_thread(old.wait, timeout=30))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        stopping = asyncio.ensure_future(asyncio.to_thread(old.stop, timeout=10))
        await asyncio.sleep(0.4)  # the agent drains now: it refuses new sends
        during = asyncio.ensure_future(send(c, "dstopped", "sent while draining", "ds-during"))
        await stopping
        t_stop = time.monotonic() - t0
        exit_status = await exit_wait
        r = await caller
        assert r.status_code == 200, r.text
        assert reply_text(r.json()) == "echo: sleep:2 slow", r.text
        assert exit_status["StatusCode"] == 0, exit_status
        assert t_stop < 8.0, f"docker stop took {t_stop:.1f} s: the agent was killed, not drained"
        d = (await c.get(f"/v1/deliveries/{r.headers['x-berth-delivery-id']}")).json()
        assert d["status"] == "done" and d["forwards"] == 1, d

        back = await wait_crash_handled(c, "dstopped", 1, old.id, docker_engine)
        assert "code 0" in (back["last_error"] or ""), back
        new = container_of(docker_engine, ws["id"])
        assert new.id != old.id
        no_docker_restart_policy(docker_engine, new.id)
        r2 = await asyncio.wait_for(during, 60)
        assert r2.status_code == 200, r2.text
        assert reply_text(r2.json()) == "echo: sent while draining", r2.text
        starts, dones = executions(state_dir(docker_engine, ws["id"], tmp_path))
        assert starts["ds-1"] == 1 and dones["ds-1"] == 1, (starts, dones)
        assert starts["ds-during"] == 1 and dones["ds-during"] == 1, (starts, dones)
        d2 = (await c.get(f"/v1/deliveries/{r2.headers['x-berth-delivery-id']}")).json()
        # Refused while the agent drained, then failed while it exited (its port closed before
        # berth saw the container die): neither counts as an attempt. Answered by the new one.
        assert d2["status"] == "done" and d2["forwards"] >= 2 and d2["attempts"] == 0, {
            k: v for k, v in d2.items() if k != "reply"
        }
        r = await send(c, "dstopped", "after stop", "ds-2")
        assert r.status_code == 200, r.text
        assert reply_text(r.json()) == "echo: after stop"
        print(
            f"\n[docker] docker stop with sleep:2 in flight: stopped (drained, exit 0) in {t_stop:.2f} s"
        )


# timings: docker vs process ------------------------------------------------------------------
async def test_start_and_restart_timings_docker_vs_process(
    docker_berth: BerthServer, docker_engine: Any
) -> None:
    """One docker and one process echo workspace on the same berth: create -> online,
    container start -> registered, and the restart cycle by phase (from the restart records),
    printed with -s for the notes."""
    runs = 3
    async with docker_berth.client() as c:
        out: dict[str, dict[str, Any]] = {}
        specs: list[tuple[str, dict[str, Any]]] = [
            ("docker", {"runtime": "docker", "image": IMAGE, "command": None}),
            ("process", {}),
        ]
        for runtime, spec in specs:
            name = f"timing-{runtime}"
            t0 = time.monotonic()
            ws = await create(c, name, drain_seconds=5, **spec)
            t_online = time.monotonic() - t0
            # Online is the agent's registration, inside the startup cycle's `starting` step;
            # the cycle records its end after it (starting's end, replay, done). Wait for
            # that: read at once, the record may be unfinished, and the first restart below
            # would join the startup cycle (a request while a cycle runs joins it) and get
            # its record, with no drain.
            (startup,) = (await c.get(f"/v1/workspaces/{name}/restarts")).json()["restarts"]
            assert startup["trigger"] == "startup", startup
            startup = await wait_restart(c, name, startup["id"])
            assert startup["phase"] == "done", startup
            starting = [phase_seconds(startup)["starting"]]
            registered: list[float] = []  # container StartedAt -> berth saw it registered
            if runtime == "docker":
                registered.append(container_to_registered(docker_engine, ws["id"], startup))
            cycles: list[dict[str, Any]] = []
            for k in range(runs):
                rec = await restart(c, name, f"timing {k}")
                assert rec["phase"] == "done", rec
                assert rec["drain_report"]["mode"] == "agent", rec
                cycles.append(rec)
                starting.append(phase_seconds(rec)["starting"])
                if runtime == "docker":
                    registered.append(container_to_registered(docker_engine, ws["id"], rec))
            r = await send(c, name, "timed", f"timing-{runtime}-1")
            assert reply_text(r.json()) == "echo: timed"
            out[runtime] = {
                "online": t_online,
                "starting": starting,
                "registered": registered,
                "cycles": cycles,
            }

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):6.2f}" if xs else "     -"

    phases = ["draining", "stopping", "requeue", "starting", "replay"]
    lines = [
        f"\n[timing] start and restart, median of {runs} idle restarts (seconds)",
        f"[timing] {'':28}{'docker':>8}{'process':>9}",
    ]

    def row(label: str, key: Any) -> None:
        lines.append(
            f"[timing] {label:28}{med(key(out['docker'])):>8}{med(key(out['process'])):>9}"
        )

    row("create -> online (API)", lambda o: [o["online"]])
    row("start phase (spawn->online)", lambda o: o["starting"])
    row("container start -> registered", lambda o: o["registered"])
    for ph in phases:
        row(f"restart: {ph}", lambda o, ph=ph: [phase_seconds(r).get(ph, 0.0) for r in o["cycles"]])
    row("restart: whole cycle", lambda o: [r["seconds"] for r in o["cycles"]])
    print("\n".join(lines))
    for o in out.values():
        assert all(r["phase"] == "done" for r in o["cycles"])


# 4. berth itself in a container ----------------------------------------------------------------
BERTH_IMAGE = "berth:local"
BERTH_NETWORK = "berth"  # the default BERTH_DOCKER_NETWORK


@pytest.fixture(scope="session")
def berth_image(docker_engine: Any) -> str:
    """berth:local, built by scripts/build-images.sh (at once when up to date)."""
    r = subprocess.run(
        [str(ROOT / "scripts/build-images.sh"), "berth"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ},
    )
    if r.returncode != 0:  # skips, or fails when CI=true, like a missing engine
        _unavailable(f"scripts/build-images.sh berth failed: {r.stderr.strip()[-1200:]}")
    return BERTH_IMAGE


def engine_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        pytest.skip(f"berth in a container needs the engine's unix socket, not {host}")
    return host[len("unix://") :]


@contextlib.asynccontextmanager
async def berth_container(client: Any, image: str) -> AsyncIterator[tuple[Any, str]]:
    """berth:local on the `berth` network with the engine socket mounted, published on
    127.0.0.1; yields (container, base URL). Everything it and its workspaces made is
    removed afterwards (and the network, if this made it)."""
    import docker.errors

    sock = engine_socket()
    made_network = False
    try:
        client.networks.get(BERTH_NETWORK)
    except docker.errors.NotFound:
        client.networks.create(BERTH_NETWORK, driver="bridge", labels={"berth.managed": "true"})
        made_network = True
    name = f"berth-it-{uuid.uuid4().hex[:8]}"
    port = free_port()
    container = await asyncio.to_thread(
        client.containers.run,
        image,
        detach=True,
        name=name,
        hostname=name,
        network=BERTH_NETWORK,
        environment={
            "BERTH_ADMIN_TOKEN": ADMIN,
            "BERTH_IN_DOCKER": "1",
            "BERTH_PUBLIC_URL": f"http://{name}:8080",
            # a data dir (so an instance label) of its own: no other berth's containers are its orphans
            "BERTH_DATA_DIR": f"/data/{name}",
            "BERTH_HEARTBEAT_SECONDS": "1",
            "BERTH_HEARTBEAT_TIMEOUT": "4",
            "BERTH_LOG_LEVEL": "info",
        },
        ports={"8080/tcp": ("127.0.0.1", port)},
        volumes={sock: {"bind": "/var/run/docker.sock", "mode": "rw"}},
        labels={"berth.test": "berth-in-docker"},
    )
    instance = Settings(data_dir=f"/data/{name}").instance
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=2.0) as h:
            while True:
                try:
                    if (await h.get(url + "/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                container.reload()
                if container.status not in ("created", "running") or time.monotonic() > deadline:
                    raise AssertionError(
                        f"berth in a container did not become ready ({container.status}):\n"
                        + container.logs(tail=60).decode(errors="replace")
                    )
                await asyncio.sleep(0.1)
        yield container, url
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(container.stop, timeout=30)  # berth drains and stops its agents
        with contextlib.suppress(Exception):
            container.remove(force=True, v=True)  # and its anonymous /data volume
        remove_instance(client, instance)
        if made_network:
            with contextlib.suppress(Exception):
                client.networks.get(BERTH_NETWORK).remove()


async def test_berth_in_a_container_reaches_its_agents_by_name(
    docker_engine: Any, berth_image: str, tmp_path: Path
) -> None:
    """berth:local on the engine (socket mounted, BERTH_IN_DOCKER=1, BERTH_PUBLIC_URL by
    container name): a docker workspace created from the host through the published port
    answers through berth at http://ws-<id[:12]>:8000, and a restart's drain signal reaches
    the agent by that name (the drain report comes from the agent)."""
    async with berth_container(docker_engine, berth_image) as (berth_c, url):
        async with httpx.AsyncClient(
            base_url=url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=120.0
        ) as c:
            t0 = time.monotonic()
            ws = await create(
                c, "indock", runtime="docker", image=IMAGE, command=None, drain_seconds=5
            )
            t_online = time.monotonic() - t0
            ws_c = container_of(docker_engine, ws["id"])
            assert (
                ws_c.labels["berth.instance"] == Settings(data_dir=f"/data/{berth_c.name}").instance
            )
            env = dict(e.split("=", 1) for e in ws_c.attrs["Config"]["Env"])
            by_name = f"http://{container_name(ws['id'])}:8000"
            assert env["BERTH_URL"] == f"http://{berth_c.name}:8080", env["BERTH_URL"]
            assert env["BERTH_ADVERTISE_URL"] == by_name
            assert BERTH_NETWORK in ws_c.attrs["NetworkSettings"]["Networks"]

            shown = (await c.get("/v1/workspaces/indock")).json()
            assert shown["url"] == by_name, shown  # where berth reaches the agent
            r = await send(c, "indock", "hello from the host", "ind-1")
            assert r.status_code == 200, r.text
            assert reply_text(r.json()) == "echo: hello from the host"

            # A restart with work in flight: the drain signal reaches the agent by name and
            # the agent reports the message it finished inside the drain.
            r = await send(c, "indock", "sleep:1.5 in flight", "ind-2", wait=0)
            assert r.status_code == 202, r.text
            delivery = r.json()["delivery_id"]
            await asyncio.sleep(0.5)
            t1 = time.monotonic()
            rec = await restart(c, "indock", "berth in docker")
            t_cycle = time.monotonic() - t1
            assert rec["phase"] == "done", rec
            report = rec["drain_report"]
            assert report["mode"] == "agent" and report["drained"] is True, rec
            assert report["completed"] == ["ind-2"] and report["unfinished"] == [], rec
            d = (await wait_deliveries_final(c, [delivery], timeout=30))[0]
            assert d["status"] == "done" and d["forwards"] == 1, d
            back = await wait_status(c, "indock", "online")
            assert back["url"] == by_name and back["restart_count"] == 1, back
            assert container_of(docker_engine, ws["id"]).id != ws_c.id
            r = await send(c, "indock", "after restart", "ind-3")
            assert reply_text(r.json()) == "echo: after restart"
            starts, dones = executions(state_dir(docker_engine, ws["id"], tmp_path))
            assert all(starts[m] == 1 and dones[m] == 1 for m in ("ind-1", "ind-2", "ind-3")), (
                starts,
                dones,
            )

            logs = berth_c.logs().decode(errors="replace")
            assert "Traceback" not in logs, logs[-3000:]
            r = await c.delete("/v1/workspaces/indock")
            assert r.status_code == 200, r.text
            assert not docker_engine.containers.list(
                all=True, filters={"name": container_name(ws["id"])}
            )
            print(
                f"\n[docker] berth in a container: create -> online {t_online:.2f} s; restart "
                f"with a message in flight {t_cycle:.2f} s ("
                + ", ".join(f"{k} {v:.2f} s" for k, v in phase_seconds(rec).items())
                + ")"
            )
