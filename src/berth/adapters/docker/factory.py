"""Finding the Docker engine: a DockerProvisioner if one answers, else None (quietly)."""

from __future__ import annotations

import logging
import os
from typing import Any

from berth.adapters.docker.network import container_of
from berth.adapters.docker.provisioner import DockerProvisioner

log = logging.getLogger("berth.docker")
__all__ = ["docker_provisioner"]


DEFAULT_SOCKET = "/var/run/docker.sock"


def _first_line(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{e.__class__.__name__}: {text[:120]}" if text else e.__class__.__name__


def docker_provisioner(settings: Any) -> DockerProvisioner | None:
    """A DockerProvisioner if the docker package is installed and an engine answers (within
    about a second, at $DOCKER_HOST or the default socket); otherwise None. Never raises."""
    try:
        from docker.client import DockerClient
    except ImportError:
        return None
    if not os.environ.get("DOCKER_HOST") and not os.path.exists(DEFAULT_SOCKET):
        log.debug("no Docker engine configured (DOCKER_HOST unset, no %s)", DEFAULT_SOCKET)
        return None
    try:
        probe = DockerClient.from_env(timeout=1)
        try:
            probe.ping()
        finally:
            probe.close()
        client = DockerClient.from_env(timeout=60)
    except Exception as e:
        where = os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET
        log.info(
            "the Docker engine at %s does not answer (%s): docker runtime off",
            where,
            _first_line(e),
        )
        return None
    in_docker = settings.in_docker
    if in_docker is None:
        # /.dockerenv alone is not enough: a VM or CI job can have it and run its own engine.
        # berth is "in Docker" for its workspaces only as a container of this very engine
        # (then it reaches them by name on the network). bootstrap hands this answer to the
        # link layer's URL rewrite, so both agree.
        in_docker = container_of(client)
        log.info("berth %s a container of this Docker engine", "is" if in_docker else "is not")
    return DockerProvisioner(
        client, instance=settings.instance, network=settings.docker_network, in_docker=in_docker
    )
