"""Issue 13 on Docker: a replace deploy under steady load starts a second container
(`ws-<id>-v2`) on the same state volume, switches, stops the first; nothing lost, nothing
run twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from berth.wire import container_name
from tests.docker.conftest import IMAGE
from tests.docker.test_docker_workspaces import docker_berth, state_dir  # noqa: F401
from tests.e2e.harness import BerthServer, create, executions, reply_text, send

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]


async def test_a_docker_deploy_under_load_loses_nothing_and_runs_nothing_twice(
    docker_berth: BerthServer,  # noqa: F811
    docker_engine: Any,
    tmp_path: Path,
) -> None:
    async with docker_berth.client() as c:
        ws = await create(
            c, "ddep", runtime="docker", image=IMAGE, command=None, restart_mode="replace"
        )
        first = docker_engine.containers.get(container_name(ws["id"])).id
        sent: dict[str, str] = {}
        stop = asyncio.Event()

        async def caller(n: int) -> None:
            i = 0
            while not stop.is_set() or i < 2:
                text = f"{'sleep:0.3 ' if i % 4 == 0 else ''}d{n}-{i}"
                r = await send(c, "ddep", text, f"ddep-{n}-{i}")
                assert r.status_code == 200, r.text
                prefix, _, echoed = reply_text(r.json()).partition(": ")
                assert echoed == text
                sent[f"ddep-{n}-{i}"] = prefix
                i += 1

        async def deploy() -> dict[str, Any]:
            await asyncio.sleep(1.0)
            t0 = time.monotonic()
            r = await c.post("/v1/workspaces/ddep/deploy", json={"env": {"ECHO_PREFIX": "v2"}})
            assert r.status_code == 202, r.text
            rec: dict[str, Any] = r.json()
            while rec["phase"] not in ("done", "failed", "rolled_back"):
                await asyncio.sleep(0.1)
                rec = (await c.get(f"/v1/workspaces/ddep/restarts/{rec['id']}")).json()
            print(f"\n[docker] deploy took {time.monotonic() - t0:.2f} s")
            stop.set()
            return rec

        *_, rec = await asyncio.gather(caller(0), caller(1), deploy())
        assert rec["phase"] == "done" and rec["mode"] == "replace", rec
        assert set(sent.values()) == {"echo", "v2"}, set(sent.values())
        info = (await c.get("/v1/workspaces/ddep")).json()
        assert info["version"] == 2 and info["peer"] is None and info["status"] == "online"
        assert info["container"] == container_name(ws["id"], 2)
        names = {x.name for x in docker_engine.containers.list(all=True)}
        assert container_name(ws["id"], 2) in names and container_name(ws["id"]) not in names
        assert docker_engine.containers.get(container_name(ws["id"], 2)).id != first
        starts, dones = executions(state_dir(docker_engine, ws["id"], tmp_path))
        assert all(starts[m] == 1 for m in sent), {m: starts[m] for m in sent if starts[m] != 1}
        assert all(dones[m] == 1 for m in sent), {m: dones[m] for m in sent if dones[m] != 1}
