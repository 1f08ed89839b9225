"""The `docker` provisioner: each workspace is a container on a Docker engine.

- The container is `ws-<id[:12]>`, labelled `berth.workspace=<id>` and
  `berth.instance=<instance>`, run with `--init` (so SIGTERM reaches the agent, which
  drains) and no Docker restart policy: berth's own restart policy decides.
- It gets its identity in the environment (BERTH_*, docs/sdk.md) with `BERTH_PORT=8000` and
  `BERTH_STATE_DIR=/state`, a named volume `berth-ws-<id[:12]>` mounted at /state that
  outlives the container, and the limits `memory` ("512m") and `cpus` (1.5).
- Port 8000 is published on 127.0.0.1 and the agent is told to register that URL
  (`BERTH_ADVERTISE_URL`). When berth itself runs in Docker it reaches the container by
  name on the user network `settings.docker_network` instead (see agent_link).
- A `BERTH_URL` on the host's loopback is rewritten to `host.docker.internal` (mapped to
  the host's bridge gateway), so the agent can register; berth must then listen on an
  address the containers reach (`--host 0.0.0.0`, or the bridge's address).
- Exits are read from the engine's event stream (a thread); stops berth asked for are not
  reported, like a process provisioner's watcher only reporting what it did not cause.

The Docker SDK is blocking: every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import socket
import threading
import time
from typing import Any

from berth.adapters.process import free_port
from berth.domain.workspace import Workspace
from berth.ports import ExitCallback, RunInfo

log = logging.getLogger("berth.docker")
__all__ = ["AGENT_PORT", "DockerProvisioner", "docker_provisioner"]

AGENT_PORT = 8000
STATE_MOUNT = "/state"
HOST_ALIAS = "host.docker.internal"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "0.0.0.0")
_PORT_TAKEN = ("port is already allocated", "address already in use")
_KEEP_LOG_LINES = 1000


def container_name(ws: Workspace | str) -> str:
    ws_id = ws if isinstance(ws, str) else ws.id
    return f"ws-{ws_id[:12]}"


def volume_name(ws: Workspace | str) -> str:
    ws_id = ws if isinstance(ws, str) else ws.id
    return f"berth-ws-{ws_id[:12]}"


def docker_provisioner(settings: Any) -> DockerProvisioner | None:
    """A DockerProvisioner if the docker package is installed and an engine answers (within
    about a second, at $DOCKER_HOST or the default socket); otherwise None. Never raises."""
    try:
        from docker.client import DockerClient
    except ImportError:
        return None
    try:
        probe = DockerClient.from_env(timeout=1)
        try:
            probe.ping()
        finally:
            probe.close()
        client = DockerClient.from_env(timeout=60)
    except Exception as e:
        log.info("no Docker engine answers (%s); the docker runtime is unavailable", e)
        return None
    in_docker = settings.in_docker
    if in_docker is None:
        # /.dockerenv alone is not enough: a VM or CI job can have it and run its own engine.
        # berth is "in Docker" for its workspaces only as a container of this very engine
        # (then it reaches them by name on the network). bootstrap hands this answer to the
        # link layer's URL rewrite, so both agree.
        in_docker = _container_of(client)
        log.info("berth %s a container of this Docker engine", "is" if in_docker else "is not")
    return DockerProvisioner(
        client, instance=settings.instance, network=settings.docker_network, in_docker=in_docker
    )


class DockerProvisioner:
    runtime = "docker"

    def __init__(
        self, client: Any, *, instance: str, network: str = "berth", in_docker: bool = False
    ) -> None:
        self.client = client
        self.instance = instance
        self.network = network
        self.in_docker = in_docker
        self.exit_codes: dict[
            str, int | None
        ] = {}  # ws id -> exit code of its last stopped container
        self._callbacks: list[ExitCallback] = []
        self._lock = threading.Lock()
        self._current: dict[str, str] = {}  # ws id -> id of the container this berth started
        self._expected: dict[str, float] = {}  # container ids berth stops or removes itself
        self._old_logs: dict[str, str] = {}  # ws id -> log tail of its removed containers
        self._network_ready = False
        self._gateway: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: Any = None  # the open event stream
        self._watch_lock: asyncio.Lock | None = None
        self._watcher: threading.Thread | None = None
        self._closed = threading.Event()

    # exits ------------------------------------------------------------------
    def on_exit(self, callback: ExitCallback) -> None:
        self._callbacks.append(callback)
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    async def _watch(self) -> None:
        """Open the engine's event stream (before a container starts, so no exit is missed)
        and follow it in a thread."""
        self._loop = asyncio.get_running_loop()
        if self._watch_lock is None:
            self._watch_lock = asyncio.Lock()
        async with self._watch_lock:
            if self._watcher is not None or self._closed.is_set():
                return
            await asyncio.to_thread(self._open_events, None)
            self._watcher = threading.Thread(
                target=self._follow, name="berth-docker-events", daemon=True
            )
            self._watcher.start()

    def _open_events(self, since: int | None) -> None:
        filters = {
            "type": "container",
            "event": ["die"],
            "label": [f"berth.instance={self.instance}"],
        }
        self._events = self.client.api.events(decode=True, filters=filters, since=since)

    def _follow(self) -> None:
        last = time.time()
        while not self._closed.is_set():
            try:
                if self._events is None:
                    self._open_events(int(last) - 1)
                for ev in self._events:
                    last = float(ev.get("time") or last)
                    self._died(ev)
                    if self._closed.is_set():
                        return
            except Exception as e:
                if self._closed.is_set():
                    return
                log.warning("Docker event stream broke (%s); reconnecting", e)
            self._events = None
            self._closed.wait(1.0)

    def _died(self, ev: dict[str, Any]) -> None:
        cid = ev.get("id") or ev.get("Actor", {}).get("ID")
        attrs = ev.get("Actor", {}).get("Attributes", {}) or {}
        ws_id = attrs.get("berth.workspace")
        if not cid or not ws_id:
            return
        with self._lock:
            if self._expected.pop(cid, None) is not None:
                return  # a stop or removal berth asked for
            if self._current.get(ws_id) != cid:
                return  # not a container this berth runs (an orphan, an older run)
            del self._current[ws_id]
        try:
            code: int | None = int(attrs["exitCode"])
        except (KeyError, ValueError):
            code = None
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._report, ws_id, code)

    def _report(self, ws_id: str, code: int | None) -> None:
        for cb in self._callbacks:
            try:
                cb(ws_id, code)
            except Exception:
                log.exception("exit callback failed")

    def _expect(self, cid: str) -> None:
        now = time.monotonic()
        with self._lock:
            for k in [k for k, t in self._expected.items() if now - t > 300]:
                del self._expected[k]
            self._expected[cid] = now
            for ws_id, current in list(self._current.items()):
                if current == cid:
                    del self._current[ws_id]

    # start ------------------------------------------------------------------
    async def start(self, ws: Workspace, identity: dict[str, str]) -> RunInfo:
        assert ws.image, "a docker workspace has an image"
        await self._watch()
        return await asyncio.to_thread(self._start, ws, identity)

    def _start(self, ws: Workspace, identity: dict[str, str]) -> RunInfo:
        import docker.errors

        name = container_name(ws)
        self._remove_named(name, ws.id, grace=1)
        self._ensure_network()
        vol = volume_name(ws)
        self._ensure_volume(vol, ws)
        for attempt in range(5):
            host_port = None if self.in_docker else free_port()
            advertise = (
                f"http://{name}:{AGENT_PORT}" if self.in_docker else f"http://127.0.0.1:{host_port}"
            )
            env = {
                **ws.env,
                **identity,
                "BERTH_PORT": str(AGENT_PORT),
                "BERTH_STATE_DIR": STATE_MOUNT,
                "BERTH_ADVERTISE_URL": advertise,
                "PYTHONUNBUFFERED": "1",
            }
            if "BERTH_URL" in env and not self.in_docker:
                env["BERTH_URL"] = _reachable_from_container(env["BERTH_URL"])
            kwargs = self._create_kwargs(ws, name, vol, env, host_port)
            container = self._create(ws.image or "", kwargs)
            with self._lock:
                self._current[ws.id] = container.id
            try:
                container.start()
            except docker.errors.APIError as e:
                self._expect(container.id)
                with contextlib.suppress(docker.errors.APIError, RuntimeError):
                    self._remove_container(container)
                why = _explain(e).lower()
                if host_port is not None and any(s in why for s in _PORT_TAKEN) and attempt < 4:
                    log.info("port %s was taken; trying another", host_port)
                    continue
                if "network" in why and "not found" in why and attempt < 4:  # removed since
                    self._network_ready = False
                    self._ensure_network()
                    continue
                raise RuntimeError(f"the engine could not start {name}: {_explain(e)}") from e
            break
        container.reload()
        published = _published_port(container.attrs) or host_port
        url = f"http://127.0.0.1:{published}" if published else advertise
        log.info("started %s (%s) from %s, agent at %s", name, container.short_id, ws.image, url)
        return RunInfo(
            url=url,
            container_id=container.id,
            state_dir=vol,
            extra={"container": name, "volume": vol, "port": published, "image": ws.image},
        )

    def _create_kwargs(
        self, ws: Workspace, name: str, vol: str, env: dict[str, str], host_port: int | None
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "name": name,
            "hostname": name,
            "detach": True,
            "init": True,
            "environment": env,
            "labels": {
                "berth.workspace": ws.id,
                "berth.instance": self.instance,
                "berth.workspace.name": ws.name,
            },
            "ports": {f"{AGENT_PORT}/tcp": ("127.0.0.1", host_port)},
            "volumes": {vol: {"bind": STATE_MOUNT, "mode": "rw"}},
            "network": self.network,
            "networking_config": {
                self.network: self.client.api.create_endpoint_config(aliases=[name])
            },
            "restart_policy": {"Name": "no"},
        }
        if not self.in_docker:
            # the host as seen from the workspaces' network: berth listens there too (see
            # gateway()), so agents reach it even when berth binds the loopback only
            kwargs["extra_hosts"] = {HOST_ALIAS: self.gateway() or "host-gateway"}
        if ws.command:
            kwargs["command"] = list(ws.command)
        memory = ws.limits.get("memory")
        if memory:
            kwargs["mem_limit"] = memory
        cpus = ws.limits.get("cpus")
        if cpus:
            kwargs["nano_cpus"] = int(float(cpus) * 1e9)
        return kwargs

    def _create(self, image: str, kwargs: dict[str, Any]) -> Any:
        import docker.errors

        try:
            return self.client.containers.create(image, **kwargs)
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code == 404 and "network" in _explain(e).lower():  # removed since: again
                self._network_ready = False
                self._ensure_network()
                return self.client.containers.create(image, **kwargs)
            raise RuntimeError(
                f"the engine refused to create {kwargs['name']}: {_explain(e)}"
            ) from e
        try:
            log.info("image %s is not on the engine; pulling it", image)
            self.client.images.pull(image)
        except docker.errors.APIError as e:
            raise RuntimeError(
                f"image {image} is not on the engine and could not be pulled: {_explain(e)}"
            ) from e
        return self.client.containers.create(image, **kwargs)

    def _ensure_network(self) -> None:
        import docker.errors

        if self._network_ready:
            return
        with self._lock:
            try:
                net = self.client.networks.get(self.network)
            except docker.errors.NotFound:
                try:
                    net = self.client.networks.create(
                        self.network,
                        driver="bridge",
                        check_duplicate=True,
                        labels={"berth.managed": "true"},
                    )
                    log.info("created Docker network %s", self.network)
                except docker.errors.APIError:  # created meanwhile by another berth
                    net = self.client.networks.get(self.network)
            if self.in_docker:
                self._join(net)
            self._network_ready = True

    def gateway(self) -> str | None:
        """The host's address on the workspaces' network (created if missing), or None."""
        if getattr(self, "_gateway", None) is None:
            try:
                self._ensure_network()
                net = self.client.networks.get(self.network)
                configs = (net.attrs.get("IPAM") or {}).get("Config") or []
                self._gateway = next((c["Gateway"] for c in configs if c.get("Gateway")), None)
            except Exception as e:  # noqa: BLE001 - no gateway: containers use host-gateway
                log.warning("could not read the gateway of network %s: %s", self.network, e)
                return None
        return self._gateway

    def _join(self, net: Any) -> None:
        """berth in a container: make sure it is on the workspaces' network (best effort)."""
        import docker.errors

        try:
            me = self.client.containers.get(socket.gethostname())
        except docker.errors.APIError:
            return
        if net.name not in (me.attrs.get("NetworkSettings", {}).get("Networks") or {}):
            with contextlib.suppress(docker.errors.APIError):
                net.connect(me)
                log.info("joined berth's container to network %s", net.name)

    def _ensure_volume(self, vol: str, ws: Workspace) -> None:
        import docker.errors

        try:
            self.client.volumes.get(vol)
        except docker.errors.NotFound:
            self.client.volumes.create(
                vol, labels={"berth.workspace": ws.id, "berth.instance": self.instance}
            )

    # stop -------------------------------------------------------------------
    async def stop(self, ws: Workspace, grace: float) -> None:
        await asyncio.to_thread(self._remove_named, container_name(ws), ws.id, grace)

    def _remove_named(self, name: str, ws_id: str, grace: float) -> None:
        """Stop (SIGTERM, `grace` seconds, SIGKILL) and remove the container, keeping its log
        tail and exit code."""
        import docker.errors

        try:
            c = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        if c.labels.get("berth.workspace") not in (None, ws_id):
            raise RuntimeError(f"a container named {name} exists that is not this workspace's")
        self._expect(c.id)
        if c.status in ("running", "restarting", "paused"):
            try:
                c.stop(timeout=max(0, math.ceil(grace)))
            except docker.errors.NotFound:
                return
            except Exception as e:  # the engine took too long: kill it
                log.warning("stopping %s failed (%s); killing it", name, e)
                with contextlib.suppress(docker.errors.APIError):
                    c.kill()
        with contextlib.suppress(docker.errors.NotFound):
            c.reload()
            self.exit_codes[ws_id] = c.attrs.get("State", {}).get("ExitCode")
            self._keep_logs(ws_id, c)
        self._remove_container(c)

    def _remove_container(self, c: Any, timeout: float = 30.0) -> None:
        """Remove a container; if another call is removing it already, wait until it is gone."""
        import docker.errors

        try:
            c.remove(force=True)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as e:
            if e.status_code != 409:
                raise
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                c.reload()
            except docker.errors.NotFound:
                return
            time.sleep(0.1)
        raise RuntimeError(f"container {c.name} was not removed within {timeout:g} s")

    def _keep_logs(self, ws_id: str, c: Any) -> None:
        try:
            text = c.logs(tail=_KEEP_LOG_LINES).decode(errors="replace")
        except Exception:
            return
        head = f"--- berth: container {c.name} ({c.short_id}) exited with {self.exit_codes.get(ws_id)}\n"
        lines = (self._old_logs.get(ws_id, "") + head + text).splitlines()
        self._old_logs[ws_id] = "\n".join(lines[-_KEEP_LOG_LINES:]) + "\n"

    async def is_running(self, ws: Workspace) -> bool:
        return await asyncio.to_thread(self._is_running, ws)

    def _is_running(self, ws: Workspace) -> bool:
        import docker.errors

        try:
            state = self.client.api.inspect_container(container_name(ws))["State"]
        except docker.errors.NotFound:
            return False
        return bool(state.get("Running")) and not state.get("Paused")

    async def cleanup_orphans(self, known: dict[str, Workspace]) -> list[str]:
        """Remove this instance's containers that this berth did not start: those of unknown
        workspaces, and those a previous berth left running (their workspaces are started
        afresh). They drain on SIGTERM first. Volumes stay."""
        await self._watch()
        return await asyncio.to_thread(self._cleanup, known)

    def _cleanup(self, known: dict[str, Workspace]) -> list[str]:
        import docker.errors

        removed = []
        for c in self.client.containers.list(
            all=True, filters={"label": f"berth.instance={self.instance}"}
        ):
            ws_id = c.labels.get("berth.workspace", "")
            with self._lock:
                if self._current.get(ws_id) == c.id:
                    continue
            ws = known.get(ws_id)
            grace = max(ws.drain_seconds + 2, 5.0) if ws is not None else 5.0
            self._expect(c.id)
            try:
                if c.status == "running":
                    c.stop(timeout=math.ceil(grace))
                self._remove_container(c)
            except docker.errors.NotFound:
                pass
            except (docker.errors.APIError, RuntimeError) as e:
                log.warning("could not remove orphaned container %s: %s", c.name, e)
                continue
            removed.append(ws.name if ws is not None else ws_id or c.name)
        return removed

    async def remove_state(self, ws: Workspace) -> bool:
        """Delete the workspace's volume (its BERTH_STATE_DIR), once it is removed for good."""
        return await asyncio.to_thread(self._remove_volume, ws)

    def _remove_volume(self, ws: Workspace) -> bool:
        import docker.errors

        self._remove_named(container_name(ws), ws.id, grace=1)
        self._old_logs.pop(ws.id, None)
        try:
            self.client.volumes.get(volume_name(ws)).remove(force=True)
        except docker.errors.NotFound:
            return False
        return True

    async def logs(self, ws: Workspace, tail: int = 200) -> str:
        return await asyncio.to_thread(self._logs, ws, tail)

    def _logs(self, ws: Workspace, tail: int) -> str:
        import docker.errors

        text = self._old_logs.get(ws.id, "")
        try:
            c = self.client.containers.get(container_name(ws))
            text += f"--- berth: container {c.name} ({c.short_id})\n"
            text += c.logs(tail=tail).decode(errors="replace")
        except docker.errors.NotFound:
            pass
        lines = text.splitlines()
        return "\n".join(lines[-tail:]) + ("\n" if lines else "")

    async def close(self) -> None:
        self._closed.set()
        stream = self._events
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.join, 5.0)
            self._watcher = None
        with contextlib.suppress(Exception):
            self.client.close()


def _container_of(client: Any) -> bool:
    """True if this process runs in a container of the engine `client` talks to."""
    if not os.path.exists("/.dockerenv"):
        return False
    candidates = [socket.gethostname()]
    with contextlib.suppress(OSError):
        with open("/proc/self/mountinfo") as f:
            candidates += re.findall(r"/containers/([0-9a-f]{64})/", f.read())
    for cid in dict.fromkeys(candidates):
        try:
            client.api.inspect_container(cid)
            return True
        except Exception:
            continue
    return False


def _reachable_from_container(url: str) -> str:
    """berth's URL as seen from a container: the host's loopback becomes the host gateway."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    hostport, slash, path = rest.partition("/")
    for host in _LOOPBACK_HOSTS:
        if hostport == host or hostport.startswith(host + ":"):
            return f"{scheme}://{HOST_ALIAS}{hostport[len(host) :]}{slash}{path}"
    return url


def _published_port(attrs: dict[str, Any]) -> int | None:
    ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    for binding in ports.get(f"{AGENT_PORT}/tcp") or []:
        if binding.get("HostPort"):
            return int(binding["HostPort"])
    return None


def _explain(e: Exception) -> str:
    return str(getattr(e, "explanation", None) or e)
