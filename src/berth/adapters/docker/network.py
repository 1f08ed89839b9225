"""The workspaces' Docker network: created on first use, joined by berth when it runs in
a container, its gateway (the host's address there), and berth's URL as a container sees it."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
from typing import Any

log = logging.getLogger("berth.docker")
__all__ = ["DockerNetwork", "HOST_ALIAS", "container_of", "reachable_from_container"]

HOST_ALIAS = "host.docker.internal"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "0.0.0.0")


class DockerNetwork:
    """The network half of DockerProvisioner (its state is set up by DockerProvisioner)."""

    client: Any
    network: str
    in_docker: bool
    _lock: threading.Lock
    _network_ready: bool
    _gateway: str | None

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


def container_of(client: Any) -> bool:
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


def reachable_from_container(url: str) -> str:
    """berth's URL as seen from a container: the host's loopback becomes the host gateway."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    hostport, slash, path = rest.partition("/")
    for host in _LOOPBACK_HOSTS:
        if hostport == host or hostport.startswith(host + ":"):
            return f"{scheme}://{HOST_ALIAS}{hostport[len(host) :]}{slash}{path}"
    return url
