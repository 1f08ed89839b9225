"""The docker provisioner on a real engine, with the echo agent image (berth-echo:local)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from berth.adapters.docker import DockerProvisioner, container_name, volume_name
from berth.adapters.process import free_port
from berth.domain.workspace import Runtime, Workspace
from tests.docker.conftest import IMAGE, NETWORK

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]  # the first run may build the images

UNREACHABLE_BERTH = "http://127.0.0.1:9"  # nothing listens: the agent's registration keeps failing


def make_ws(**kw: Any) -> Workspace:
    ws_id = str(uuid.uuid4())
    return Workspace(
        id=ws_id,
        name=f"t-{ws_id[:8]}",
        runtime=Runtime.DOCKER,
        image=IMAGE,
        drain_seconds=2.0,
        **kw,
    )


def identity(
    p: DockerProvisioner, ws: Workspace, berth_url: str = UNREACHABLE_BERTH
) -> dict[str, str]:
    return {
        "BERTH_URL": berth_url,
        "BERTH_WORKSPACE_ID": ws.id,
        "BERTH_WORKSPACE_NAME": ws.name,
        "BERTH_WORKSPACE_TOKEN": "bws_test",
        "BERTH_DRAIN_SECONDS": f"{ws.drain_seconds:g}",
        "BERTH_MAX_CONCURRENCY": "1",
        "BERTH_INSTANCE": p.instance,
    }


async def wait_card(url: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Exception | str = "no answer"
    async with httpx.AsyncClient(timeout=2.0) as c:
        while time.monotonic() < deadline:
            try:
                r = await c.get(url + "/.well-known/agent-card.json")
                if r.status_code == 200:
                    return r.json()  # type: ignore[no-any-return]
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                last = e
            await asyncio.sleep(0.05)
    raise AssertionError(f"the agent at {url} did not answer within {timeout} s: {last}")


async def send(url: str, text: str, message_id: str) -> dict[str, Any]:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "message/send",
        "params": {
            "message": {
                "role": "user",
                "messageId": message_id,
                "parts": [{"kind": "text", "text": text}],
            }
        },
    }
    async with httpx.AsyncClient(timeout=30.0) as c:
        r = await c.post(url + "/", json=body)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def read_state_file(client: Any, ws: Workspace, path: str) -> str:
    out = client.containers.get(container_name(ws)).exec_run(["cat", f"/state/{path}"])
    assert out.exit_code == 0, out.output
    return out.output.decode()  # type: ignore[no-any-return]


async def test_start_serves_the_agent_and_stop_drains(
    provisioner: DockerProvisioner, docker_engine: Any
) -> None:
    ws = make_ws(limits={"memory": "256m", "cpus": 0.5})
    t0 = time.monotonic()
    info = await provisioner.start(ws, identity(provisioner, ws))
    t_started = time.monotonic() - t0
    assert info.url and info.url.startswith("http://127.0.0.1:")
    card = await wait_card(info.url)
    t_http = time.monotonic() - t0
    print(
        f"\n[docker] start() {t_started:.2f} s; start -> first agent-card answer {t_http:.2f} s "
        f"(BERTH_URL unreachable: the agent serves while its registration retries)"
    )
    assert card["name"] == "echo"
    assert info.state_dir == volume_name(ws)
    assert info.container_id
    assert await provisioner.is_running(ws)

    attrs = docker_engine.api.inspect_container(container_name(ws))
    host = attrs["HostConfig"]
    assert host["Init"] is True
    assert host["RestartPolicy"]["Name"] in ("", "no")
    assert host["Memory"] == 256 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert attrs["Config"]["Labels"]["berth.workspace"] == ws.id
    assert attrs["Config"]["Labels"]["berth.instance"] == provisioner.instance
    env = dict(e.split("=", 1) for e in attrs["Config"]["Env"])
    assert env["BERTH_PORT"] == "8000" and env["BERTH_STATE_DIR"] == "/state"
    assert env["BERTH_WORKSPACE_ID"] == ws.id
    assert env["BERTH_URL"] == "http://host.docker.internal:9"
    assert env["BERTH_ADVERTISE_URL"] == info.url
    net = attrs["NetworkSettings"]["Networks"][NETWORK]
    assert container_name(ws) in (net.get("Aliases") or [])
    assert any(
        m["Name"] == volume_name(ws) and m["Destination"] == "/state" for m in attrs["Mounts"]
    )

    exits: list[tuple[str, int | None]] = []
    provisioner.on_exit(lambda ws_id, code, _v: exits.append((ws_id, code)))
    t1 = time.monotonic()
    await provisioner.stop(ws, grace=10.0)
    t_stop = time.monotonic() - t1
    print(f"[docker] graceful stop (SIGTERM drain, idle agent) {t_stop:.2f} s")
    assert provisioner.exit_codes[ws.id] == 0, await provisioner.logs(ws)
    assert t_stop < 9.0, "the agent was killed at the end of the grace period, not drained"
    assert not await provisioner.is_running(ws)
    assert not docker_engine.containers.list(all=True, filters={"name": container_name(ws)})
    assert "exited with 0" in await provisioner.logs(ws)
    await asyncio.sleep(1.0)
    assert exits == [], "a stop berth asked for was reported as an exit"


async def test_kill_from_outside_fires_on_exit(
    provisioner: DockerProvisioner, docker_engine: Any
) -> None:
    exits: asyncio.Queue[tuple[str, int | None]] = asyncio.Queue()
    provisioner.on_exit(lambda ws_id, code, _v: exits.put_nowait((ws_id, code)))
    ws = make_ws()
    info = await provisioner.start(ws, identity(provisioner, ws))
    assert info.url
    await wait_card(info.url)
    t0 = time.monotonic()
    await asyncio.to_thread(lambda: docker_engine.containers.get(container_name(ws)).kill())
    ws_id, code = await asyncio.wait_for(exits.get(), 10.0)
    print(f"\n[docker] docker kill -> on_exit callback {time.monotonic() - t0:.2f} s")
    assert ws_id == ws.id
    assert code == 137  # SIGKILL
    assert not await provisioner.is_running(ws)

    # A start after a crash replaces the dead container; a stop berth asks for is not reported.
    info = await provisioner.start(ws, identity(provisioner, ws))
    assert info.url
    await wait_card(info.url)
    await provisioner.stop(ws, grace=5.0)
    await asyncio.sleep(1.0)
    assert exits.empty()


async def test_cleanup_removes_orphans_and_keeps_its_own(
    provisioner: DockerProvisioner, docker_engine: Any
) -> None:
    ws = make_ws()
    info = await provisioner.start(ws, identity(provisioner, ws))
    orphan_id = str(uuid.uuid4())
    orphan = await asyncio.to_thread(
        docker_engine.containers.run,
        IMAGE,
        ["sleep", "300"],
        detach=True,
        init=True,
        name=f"ws-{orphan_id[:12]}",
        labels={"berth.workspace": orphan_id, "berth.instance": provisioner.instance},
    )
    other = await asyncio.to_thread(  # another berth's container: not ours to touch
        docker_engine.containers.run,
        IMAGE,
        ["sleep", "300"],
        detach=True,
        init=True,
        labels={"berth.workspace": orphan_id, "berth.instance": "someone-else"},
    )
    try:
        removed = await provisioner.cleanup_orphans({ws.id: ws})
        assert removed == [orphan_id]
        names = {c.name for c in docker_engine.containers.list(all=True)}
        assert orphan.name not in names
        assert other.name in names
        assert container_name(ws) in names and await provisioner.is_running(ws)
        assert info.url
        await wait_card(info.url)
    finally:
        other.remove(force=True)


async def test_cleanup_removes_containers_a_previous_berth_left(
    provisioner: DockerProvisioner, docker_engine: Any
) -> None:
    """A new berth (a new provisioner, same instance) stops what the old one left running,
    even for known workspaces: they are started afresh by the recovery."""
    ws = make_ws()
    await provisioner.start(ws, identity(provisioner, ws))
    from docker.client import DockerClient

    fresh = DockerProvisioner(
        DockerClient.from_env(timeout=60), instance=provisioner.instance, network=NETWORK
    )
    try:
        assert await fresh.cleanup_orphans({ws.id: ws}) == [ws.name]
        assert not await fresh.is_running(ws)
    finally:
        await fresh.close()


async def test_state_volume_survives_stop_and_start(
    provisioner: DockerProvisioner, docker_engine: Any
) -> None:
    ws = make_ws()
    info = await provisioner.start(ws, identity(provisioner, ws))
    assert info.url
    await wait_card(info.url)
    first = await send(info.url, "hello", "m-persist-1")
    assert "echo: hello" in json.dumps(first)
    assert read_state_file(docker_engine, ws, "executions.log").split() == [
        "start",
        "m-persist-1",
        "done",
        "m-persist-1",
    ]
    await provisioner.stop(ws, grace=10.0)

    t0 = time.monotonic()
    info = await provisioner.start(ws, identity(provisioner, ws))
    assert info.url
    await wait_card(info.url)
    print(
        f"\n[docker] restart on an existing volume: start -> first answer {time.monotonic() - t0:.2f} s"
    )
    log = read_state_file(docker_engine, ws, "executions.log")
    assert "done m-persist-1" in log
    # The SDK's dedupe store is in the volume too: the redelivered message is not run again.
    again = await send(info.url, "hello", "m-persist-1")
    assert "echo: hello" in json.dumps(again)
    assert read_state_file(docker_engine, ws, "executions.log") == log
    await provisioner.stop(ws, grace=10.0)
    assert await provisioner.remove_state(ws)
    assert not docker_engine.volumes.list(filters={"name": volume_name(ws)})


async def test_berth_in_docker_reaches_agents_by_name(docker_engine: Any) -> None:
    """With berth in a container on the same network, the agent advertises
    http://ws-<id[:12]>:8000 and that name answers from the network."""
    from docker.client import DockerClient

    p = DockerProvisioner(
        DockerClient.from_env(timeout=60),
        instance=f"test-{uuid.uuid4().hex[:12]}",
        network=NETWORK,
        in_docker=True,
    )
    try:
        ws = make_ws()
        info = await p.start(ws, identity(p, ws, berth_url="http://berth:8080"))
        name = container_name(ws)
        env = dict(
            e.split("=", 1) for e in docker_engine.api.inspect_container(name)["Config"]["Env"]
        )
        assert env["BERTH_ADVERTISE_URL"] == f"http://{name}:8000"
        assert env["BERTH_URL"] == "http://berth:8080"  # left alone: berth is on the network
        assert info.url == f"http://{name}:8000"  # never the published port (a race showed it)
        ports = docker_engine.api.inspect_container(name)["NetworkSettings"]["Ports"]
        published = ports["8000/tcp"][0]["HostPort"]
        await wait_card(f"http://127.0.0.1:{published}")  # still published, for people
        probe = "import urllib.request as u; print(u.urlopen('http://%s:8000/.well-known/agent-card.json').status)"
        out = await asyncio.to_thread(
            docker_engine.containers.run,
            IMAGE,
            ["python", "-c", probe % name],
            network=NETWORK,
            remove=True,
        )
        assert out.strip() == b"200"
    finally:
        await p.close()
        from tests.docker.conftest import remove_instance

        remove_instance(docker_engine, p.instance)


class _FakeBerth(BaseHTTPRequestHandler):
    registered: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path == "/v1/agents/register":
            type(self).registered.append(
                {"auth": self.headers.get("authorization"), **json.loads(body)}
            )
        out = json.dumps({"heartbeat_seconds": 2, "ok": True}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def fake_berth() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """A stand-in for berth on the host (all addresses), recording registrations."""
    port = free_port()
    registered: list[dict[str, Any]] = []
    handler = type("H", (_FakeBerth,), {"registered": registered})
    server = ThreadingHTTPServer(("0.0.0.0", port), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield port, registered
    finally:
        server.shutdown()
        server.server_close()


async def test_agent_registers_with_berth_on_the_host(
    provisioner: DockerProvisioner, fake_berth: tuple[int, list[dict[str, Any]]]
) -> None:
    """BERTH_URL on the host's loopback reaches berth from the container, and the URL the
    agent registers is the published port, where berth (on the host) reaches it."""
    port, registered = fake_berth
    ws = make_ws()
    t0 = time.monotonic()
    info = await provisioner.start(
        ws, identity(provisioner, ws, berth_url=f"http://127.0.0.1:{port}")
    )
    deadline = time.monotonic() + 30
    while not registered and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert registered, "the agent never reached the host's berth"
    print(f"\n[docker] start -> registration with berth on the host {time.monotonic() - t0:.2f} s")
    assert registered[0]["url"] == info.url
    assert registered[0]["auth"] == "Bearer bws_test"
    assert info.url
    await wait_card(registered[0]["url"])


async def test_berth_runs_a_docker_workspace_end_to_end(docker_engine: Any, tmp_path: Any) -> None:
    """A real `berth serve` on the host (listening on all addresses, so containers can
    register): create a docker workspace, talk to it through the proxy, restart it with a
    drain, crash it from outside (berth restarts it), remove it."""
    from berth.settings import Settings
    from tests.e2e.harness import BerthServer, create, reply_text, send, wait_status

    server = BerthServer(
        tmp_path / "berth", args=["--host", "0.0.0.0"], env={"BERTH_DOCKER_NETWORK": NETWORK}
    ).start()
    instance = Settings(
        data_dir=str(tmp_path / "berth")
    ).instance  # what berth labels its containers with
    try:
        async with server.client() as c:
            t0 = time.monotonic()
            ws = await create(
                c, "dock", runtime="docker", image=IMAGE, command=None, drain_seconds=5
            )
            print(f"\n[docker] berth: create -> online {time.monotonic() - t0:.2f} s")
            shown = (await c.get("/v1/workspaces/dock")).json()
            assert shown["container"] == f"ws-{ws['id'][:12]}"
            assert shown["state_dir"] == f"berth-ws-{ws['id'][:12]}"
            assert (
                docker_engine.containers.get(shown["container"]).labels["berth.instance"]
                == instance
            )

            r = await send(c, "dock", "hello", "e2e-1")
            assert r.status_code == 200, r.text
            assert reply_text(r.json()) == "echo: hello"

            t0 = time.monotonic()
            r = await c.post("/v1/workspaces/dock/restart", json={"reason": "test"})
            assert r.status_code == 202, r.text
            rid = r.json()["id"]
            deadline = time.monotonic() + 60
            while True:
                rec = (await c.get(f"/v1/workspaces/dock/restarts/{rid}")).json()
                if rec.get("phase") in ("done", "failed") or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            print(
                f"[docker] berth: restart cycle {time.monotonic() - t0:.2f} s: {rec.get('phase')}"
            )
            assert rec["phase"] == "done", rec
            await wait_status(c, "dock", "online")
            r = await send(c, "dock", "again", "e2e-2")
            assert reply_text(r.json()) == "echo: again"

            before = (await c.get("/v1/workspaces/dock")).json()["crash_count"]
            await asyncio.to_thread(lambda: docker_engine.containers.get(shown["container"]).kill())
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                now = (await c.get("/v1/workspaces/dock")).json()
                if now["crash_count"] > before and now["status"] == "online":
                    break
                await asyncio.sleep(0.1)
            assert now["crash_count"] == before + 1 and now["status"] == "online", now
            r = await send(c, "dock", "after crash", "e2e-3")
            assert reply_text(r.json()) == "echo: after crash"

            r = await c.delete("/v1/workspaces/dock")
            assert r.status_code == 200, r.text
            assert not docker_engine.containers.list(all=True, filters={"name": shown["container"]})
    finally:
        server.stop()
        server.kill9()
        from tests.docker.conftest import remove_instance

        remove_instance(docker_engine, instance)


async def test_factory_finds_the_engine_and_where_berth_runs(
    docker_engine: Any, tmp_path: Any
) -> None:
    from berth.bootstrap import _provisioners
    from berth.settings import Settings

    settings = Settings(data_dir=str(tmp_path))
    t0 = time.monotonic()
    provisioners, in_docker = _provisioners(settings)  # as bootstrap asks, for the link layer
    p = provisioners.get("docker")
    assert p is not None and p.runtime == "docker"
    print(f"\n[docker] docker_provisioner(settings) {time.monotonic() - t0:.2f} s")
    try:
        # These tests run on the engine's host (maybe with a /.dockerenv), not in one of its
        # containers: agents are published on loopback and berth's link must not rewrite
        # (the engine's answer reaches the link layer through bootstrap; Settings is frozen).
        assert getattr(p, "in_docker", None) is False and in_docker is False
        assert getattr(p, "instance", None) == settings.instance
    finally:
        for prov in provisioners.values():
            await prov.close()


def test_factory_without_an_engine_is_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    from berth.adapters.docker import docker_provisioner
    from berth.settings import Settings

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    t0 = time.monotonic()
    assert docker_provisioner(Settings(data_dir=str(tmp_path))) is None
    assert time.monotonic() - t0 < 2.0


async def test_a_default_berth_on_the_loopback_serves_docker_workspaces(
    docker_engine: Any, tmp_path: Any
) -> None:
    """`berth serve` as the quick start runs it (127.0.0.1 only): berth also listens on the
    host's address on the workspaces' network, so a container can register, and nothing
    else is exposed."""
    from berth.settings import Settings
    from tests.e2e.harness import BerthServer, create, reply_text, send

    server = BerthServer(tmp_path / "berth", env={"BERTH_DOCKER_NETWORK": NETWORK}).start()
    instance = Settings(data_dir=str(tmp_path / "berth")).instance
    try:
        async with server.client() as c:
            ws = await create(c, "loopback-dock", runtime="docker", image=IMAGE, command=None)
            r = await send(c, "loopback-dock", "over the gateway", "lb-1")
            assert reply_text(r.json()) == "echo: over the gateway"
            env = docker_engine.containers.get(f"ws-{ws['id'][:12]}").attrs["Config"]["Env"]
            assert f"BERTH_URL=http://host.docker.internal:{server.port}" in env
        gateway = docker_engine.networks.get(NETWORK).attrs["IPAM"]["Config"][0]["Gateway"]
        assert "also listening on " + gateway in server.log.read_text()
    finally:
        server.stop()
        server.kill9()
        from tests.docker.conftest import remove_instance

        remove_instance(docker_engine, instance)
