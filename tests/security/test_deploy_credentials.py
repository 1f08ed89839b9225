"""A deploy's second instance under issue 10's rules: its own run credential (registers and
heartbeats for its own start only, never calls a workspace, refused once its version is
stopped), the agent user and the minimal environment, like the first."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import BerthServer, send_body, wait_status
from tests.security.conftest import ALLOWED_AGENT_ENV

pytestmark = pytest.mark.slow

# Prints what the test checks, registers with its run credential, then waits to be stopped.
PROBE = r"""
echo "V$PROBE_V TOKEN $BERTH_WORKSPACE_TOKEN"
echo "V$PROBE_V UID $(id -u)"
echo "V$PROBE_V ENVKEYS $(env | cut -d= -f1 | sort | tr '\n' ' ')"
curl -s -o /dev/null -w "V$PROBE_V REGISTERED %{http_code}\n" \
  -H "authorization: Bearer $BERTH_WORKSPACE_TOKEN" -H 'content-type: application/json' \
  -d '{"url": "http://127.0.0.1:9/"}' "$BERTH_URL/v1/agents/register"
exec sleep 120
"""
AGENT_ENV = ALLOWED_AGENT_ENV | {
    "BERTH_SHARED_STATE",  # restart_mode replace: two versions on one state directory
    "PROBE_V",
}


async def _probe(c: httpx.AsyncClient, version: int) -> dict[str, str]:
    """What version `version` of the probe printed, once it has registered."""
    tag = f"V{version} "
    got: dict[str, str] = {}
    for _ in range(150):
        text = (await c.get("/v1/workspaces/dep/logs")).text
        got = dict(x[len(tag) :].split(" ", 1) for x in text.splitlines() if x.startswith(tag))
        if "REGISTERED" in got:
            return got
        await asyncio.sleep(0.2)
    raise AssertionError(f"version {version} did not register: {got}")


async def _finished(c: httpx.AsyncClient, record: dict[str, object]) -> dict[str, object]:
    for _ in range(300):
        r = (await c.get(f"/v1/workspaces/dep/restarts/{record['id']}")).json()
        if r["finished_at"] is not None:
            return r  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError(f"the deploy did not finish: {record}")


async def test_each_version_has_its_own_run_credential_and_runs_as_the_agent_user(
    tmp_path: Path,
) -> None:
    as_root = os.geteuid() == 0
    agents = Path(tempfile.mkdtemp(prefix="berth-agents-", dir="/tmp"))  # reachable by others
    os.chmod(agents, 0o711)
    server = BerthServer(tmp_path / "berth", env={"BERTH_AGENT_DIR": str(agents)})
    if as_root:
        server.env.pop("BERTH_AGENT_USER")  # the default: berth-agent
    server.start()
    try:
        async with server.client() as c, httpx.AsyncClient(base_url=server.url) as anon:

            async def heartbeat(token: str) -> int:
                r = await anon.post(
                    "/v1/agents/heartbeat",
                    headers={"authorization": f"Bearer {token}"},
                    json={"active_tasks": 0},
                )
                return r.status_code

            spec = {
                "name": "dep",
                "command": ["/bin/sh", "-c", PROBE],
                "env": {"PROBE_V": "1"},
                "restart_mode": "replace",
                "restart_policy": "never",
                "drain_seconds": 0,
            }
            created = await c.post("/v1/workspaces", json=spec)
            assert created.status_code == 201, created.text
            v1 = await _probe(c, 1)
            await wait_status(c, "dep", "online")
            # a canary keeps both versions running until it is decided
            r = await c.post(
                "/v1/workspaces/dep/deploy",
                json={"env": {"PROBE_V": "2"}, "canary": 50, "canary_seconds": 300},
            )
            assert r.status_code == 202, r.text
            canary = r.json()
            v2 = await _probe(c, 2)
            for v in (v1, v2):
                assert v["REGISTERED"] == "200" and v["TOKEN"].startswith("bwr_")
                keys = set(v["ENVKEYS"].split())
                assert "BERTH_ADMIN_TOKEN" not in keys and keys <= AGENT_ENV, keys
                assert "BERTH_SHARED_STATE" in keys  # the SDK shares its dedupe file
            assert v1["TOKEN"] != v2["TOKEN"]
            assert v2["UID"] == v1["UID"] and (v2["UID"] != "0") == as_root
            # both run credentials work for their own start, and only there
            assert await heartbeat(v1["TOKEN"]) == 200 and await heartbeat(v2["TOKEN"]) == 200
            call = await anon.post(
                "/v1/workspaces/dep/a2a",
                headers={"authorization": f"Bearer {v2['TOKEN']}"},
                json=send_body("hi"),
            )
            assert call.status_code == 403 and "wrong_role" in call.text
            mgmt = await anon.get(
                "/v1/workspaces", headers={"authorization": f"Bearer {v2['TOKEN']}"}
            )
            assert mgmt.status_code in (401, 403)
            # a rolled-back version's credential is refused from then on
            r = await c.post("/v1/workspaces/dep/deploy/rollback")
            assert r.status_code == 202, r.text
            assert (await _finished(c, canary))["phase"] == "rolled_back"
            assert await heartbeat(v2["TOKEN"]) == 401
            assert await heartbeat(v1["TOKEN"]) == 200
            # a replace: the stopped old version's credential goes, the new one serves
            r = await c.post("/v1/workspaces/dep/deploy", json={"env": {"PROBE_V": "3"}})
            assert r.status_code == 202, r.text
            v3 = await _probe(c, 3)
            done = await _finished(c, r.json())
            assert done["phase"] == "done"
            assert v3["UID"] == v1["UID"] and v3["TOKEN"] not in (v1["TOKEN"], v2["TOKEN"])
            assert await heartbeat(v1["TOKEN"]) == 401
            assert await heartbeat(v3["TOKEN"]) == 200
            serving = (await c.get("/v1/workspaces/dep")).json()
            assert serving["version"] == done["versions"]["to"] and serving["peer"] is None  # type: ignore[index]
    finally:
        server.stop()
        server.kill9()
