"""A real Docker engine and the echo image for the docker provisioner's tests.

The engine: $DOCKER_HOST if it answers, else the local engine of scripts/docker-engine.sh
(installed and started on first use; needs root). The image: scripts/build-images.sh echo
(cached by a source-hash label, so it is rebuilt only when the sources changed).
Without an engine these tests skip, or fail when CI=true. BERTH_TEST_DOCKER=0 skips them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# the echo image: scripts/build-images.sh builds it under this tag too (a second work tree
# sets its own, so its sources' image does not replace another's berth-echo:local)
IMAGE = os.environ.get("BERTH_ECHO_IMAGE") or "berth-echo:local"
NETWORK = "berth-test"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"Docker engine needed (CI=true): {reason}", pytrace=False)
    pytest.skip(f"no Docker engine: {reason}")


def _answers() -> bool:
    from docker.client import DockerClient

    try:
        c = DockerClient.from_env(timeout=2)
        try:
            return bool(c.ping())
        finally:
            c.close()
    except Exception:
        return False


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A docker client for a running engine with the echo image (IMAGE) built."""
    if os.environ.get("BERTH_TEST_DOCKER") == "0":
        pytest.skip("BERTH_TEST_DOCKER=0")
    try:
        from docker.client import DockerClient
    except ImportError:
        _unavailable("the `docker` Python package is not installed (pip install 'berth[docker]')")
    if not os.environ.get("DOCKER_HOST") or not _answers():
        t0 = time.monotonic()
        try:
            r = subprocess.run(
                [str(ROOT / "scripts/docker-engine.sh"), "start"],
                capture_output=True,
                text=True,
                timeout=600,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            _unavailable(f"scripts/docker-engine.sh: {e}")
        lines = r.stdout.strip().splitlines()
        if r.returncode != 0 or not lines or not lines[-1].startswith("export DOCKER_HOST="):
            _unavailable(
                f"scripts/docker-engine.sh exited {r.returncode}: {r.stderr.strip()[-600:]}"
            )
        os.environ["DOCKER_HOST"] = lines[-1].split("=", 1)[1].strip().strip("'\"")
        print(f"\n[docker] engine at {os.environ['DOCKER_HOST']} ({time.monotonic() - t0:.1f} s)")
    if not _answers():
        _unavailable(f"the engine at {os.environ.get('DOCKER_HOST')} does not answer")
    t0 = time.monotonic()
    r = subprocess.run(
        [str(ROOT / "scripts/build-images.sh"), "echo"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ},
    )
    if r.returncode != 0:
        _unavailable(f"scripts/build-images.sh failed: {r.stderr.strip()[-1200:]}")
    print(f"[docker] images ready ({time.monotonic() - t0:.1f} s)")
    client = DockerClient.from_env(timeout=60)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.networks.get(NETWORK).remove()
        client.close()


def remove_instance(client: Any, instance: str) -> None:
    """Remove every container and volume labelled with this berth instance."""
    for c in client.containers.list(all=True, filters={"label": f"berth.instance={instance}"}):
        with contextlib.suppress(Exception):
            c.remove(force=True)
    for v in client.volumes.list(filters={"label": f"berth.instance={instance}"}):
        with contextlib.suppress(Exception):
            v.remove(force=True)


@pytest.fixture
async def provisioner(docker_engine: Any) -> AsyncIterator[Any]:
    """A DockerProvisioner with an instance of its own (so tests do not see each other)."""
    from docker.client import DockerClient

    from berth.adapters.docker import DockerProvisioner

    instance = f"test-{uuid.uuid4().hex[:12]}"
    p = DockerProvisioner(DockerClient.from_env(timeout=60), instance=instance, network=NETWORK)
    try:
        yield p
    finally:
        await p.close()
        remove_instance(docker_engine, instance)
