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

provisioner.py: start, stop, logs, orphans; events.py: exits; network.py: the network.
"""

from berth.adapters.docker.factory import docker_provisioner
from berth.adapters.docker.provisioner import (
    AGENT_PORT,
    DockerProvisioner,
    container_name,
    volume_name,
)

__all__ = ["AGENT_PORT", "DockerProvisioner", "container_name", "docker_provisioner", "volume_name"]
