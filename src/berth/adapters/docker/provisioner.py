"""DockerProvisioner: start, stop, logs and orphans of workspace containers (see the
package docstring for what a workspace container is)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from typing import Any

from berth.adapters.docker.events import DockerExits
from berth.adapters.docker.network import (
    HOST_ALIAS,
    DockerNetwork,
    reachable_from_container,
)
from berth.adapters.process import free_port
from berth.domain.workspace import Workspace
from berth.ports import ExitCallback, RunInfo
from berth.wire import container_name as _wire_container_name

log = logging.getLogger("berth.docker")
__all__ = ["AGENT_PORT", "DockerProvisioner", "container_name", "volume_name"]

AGENT_PORT = 8000
STATE_MOUNT = "/state"
_PORT_TAKEN = ("port is already allocated", "address already in use")
_KEEP_LOG_LINES = 1000


def container_name(ws: Workspace | str) -> str:
    """The container of the workspace's version `ws.version` (of version 1 for an id)."""
    return (
        _wire_container_name(ws) if isinstance(ws, str) else _wire_container_name(ws.id, ws.version)
    )


def current_key(ws_id: str, version: int) -> str:
    """The key of `_current`: a deploy runs two versions of a workspace at once."""
    return f"{ws_id}/{version}"


def volume_name(ws: Workspace | str) -> str:
    ws_id = ws if isinstance(ws, str) else ws.id
    return f"berth-ws-{ws_id[:12]}"


class DockerProvisioner(DockerExits, DockerNetwork):
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
        # "<ws id>/<version>" -> id of the container this berth started (current_key)
        self._current: dict[str, str] = {}
        self._expected: dict[str, float] = {}  # container ids berth stops or removes itself
        self._old_logs: dict[str, str] = {}  # ws id -> log tail of its removed containers
        self._network_ready = False
        self._gateway: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: Any = None  # the open event stream
        self._watch_lock: asyncio.Lock | None = None
        self._watcher: threading.Thread | None = None
        self._closed = threading.Event()

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
                env["BERTH_URL"] = reachable_from_container(env["BERTH_URL"])
            kwargs = self._create_kwargs(ws, name, vol, env, host_port)
            container = self._create(ws.image or "", kwargs)
            with self._lock:
                self._current[current_key(ws.id, ws.version)] = container.id
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
        # inside a container berth reaches the agent by name; the port Docker published on
        # the engine host's loopback (for people) is unreachable from there, and whether
        # the reload shows it yet is a race: it is never the recorded URL
        url = advertise if self.in_docker or not published else f"http://127.0.0.1:{published}"
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
                "berth.version": str(ws.version),
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

    async def serves(self, ws: Workspace, url: str) -> bool | None:
        """The engine binds the published port when it starts the container (a taken port
        fails the start, tried again on another): nothing else can be answering there."""
        return None

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
            version = int(c.labels.get("berth.version") or 1)
            with self._lock:
                if self._current.get(current_key(ws_id, version)) == c.id:
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


def _published_port(attrs: dict[str, Any]) -> int | None:
    ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    for binding in ports.get(f"{AGENT_PORT}/tcp") or []:
        if binding.get("HostPort"):
            return int(binding["HostPort"])
    return None


def _explain(e: Exception) -> str:
    return str(getattr(e, "explanation", None) or e)
