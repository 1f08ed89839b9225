"""Liveness, failed starts, metrics, events and OpenAPI, against a real server (the CLI:
tests/cli)."""

import asyncio
import json
import os
import signal
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import create, reply_text, send, wait_status

pytestmark = pytest.mark.slow


async def test_a_hung_agent_is_noticed_by_missing_heartbeats_and_restarted(berth_server):
    async with berth_server.client() as c:
        await create(c, "hung")
        before = (await c.get("/v1/workspaces/hung")).json()
        os.kill(before["pid"], signal.SIGSTOP)
        try:
            r = await send(c, "hung", "are you there", "hung-1", wait=30)
            assert r.status_code == 200 and reply_text(r.json()) == "echo: are you there"
        finally:
            try:
                os.kill(before["pid"], signal.SIGCONT)
            except ProcessLookupError:
                pass
        after = (await c.get("/v1/workspaces/hung")).json()
        assert after["pid"] != before["pid"] and "heartbeat" in after["last_error"]


async def test_an_agent_that_cannot_start_ends_failed_with_messages_kept(berth_server):
    async with berth_server.client() as c:
        r = await c.post(
            "/v1/workspaces",
            json={"name": "broken", "command": [sys.executable, "-c", "raise SystemExit(7)"]},
        )
        assert r.status_code == 201
        ws = await wait_status(c, "broken", "failed")
        assert "code 7" in ws["last_error"]
        held = await send(c, "broken", "kept", "kept-1", wait=0)
        assert held.status_code == 202
        rec = (await c.get("/v1/workspaces/broken/restarts")).json()["restarts"][0]
        assert rec["phase"] == "failed" and "code 7" in rec["error"]
        d = (await c.get(f"/v1/deliveries/{held.json()['delivery_id']}")).json()
        assert d["status"] == "queued"


async def test_metrics_and_events(berth_server):
    async with berth_server.client() as c:
        events: list[dict] = []

        async def listen() -> None:
            async with c.stream("GET", "/v1/events") as r:
                kind = None
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        events.append({"kind": kind, **json.loads(line[6:])})

        task = asyncio.create_task(listen())
        await asyncio.sleep(0.3)
        await create(c, "metered")
        await send(c, "metered", "count me", "metric-1")
        await c.post("/v1/workspaces/metered/restart")
        await wait_status(c, "metered", "online")
        await asyncio.sleep(1.0)
        task.cancel()
        kinds = {e["kind"] for e in events}
        assert {
            "workspace.created",
            "workspace.registered",
            "workspace.state",
            "restart.phase",
            "restart.finished",
            "delivery.accepted",
            "delivery.forwarded",
            "delivery.done",
        } <= kinds, kinds
        flow = [e for e in events if e.get("message_id") == "metric-1"]
        assert [e["kind"] for e in flow] == [
            "delivery.accepted",
            "delivery.forwarded",
            "delivery.done",
        ]
        ws = ("workspace", "metered")
        restarted = ("berth_restarts_total", (("result", "done"), ("trigger", "api"), ws))
        for _ in range(100):  # counted as the cycle's last step, just after it went online
            text = (await c.get("/metrics")).text
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            if restarted in samples:
                break
            await asyncio.sleep(0.1)
        assert samples[("berth_deliveries_total", (("outcome", "done"), ws))] == 1
        assert samples[("berth_deliveries_accepted_total", (ws,))] == 1
        assert samples[("berth_delivery_seconds_count", (ws,))] == 1
        assert samples[("berth_queue_wait_seconds_count", (ws,))] == 1
        assert samples[("berth_drain_seconds_count", (ws,))] == 1
        assert samples[("berth_restarts_total", (("result", "done"), ("trigger", "api"), ws))] == 1
        assert samples[("berth_queue_depth", (ws,))] == 0
        om = await c.get("/metrics", headers={"accept": "application/openmetrics-text"})
        assert om.headers["content-type"].startswith("application/openmetrics-text")
        assert 'delivery_id="' in om.text  # an exemplar names a delivery
        spec = (await c.get("/openapi.json")).json()
        assert "/v1/workspaces/{ref}/restart" in spec["paths"]
        assert "name" in json.dumps(spec["paths"]["/v1/workspaces"]["post"]["requestBody"])


async def test_an_orphaned_agent_process_is_stopped_by_housekeeping(tmp_path):
    """An agent process of this berth whose workspace does not exist (say, left by a crash
    between a start and its record) is stopped by the periodic pass, not only at start."""
    from pathlib import Path

    from tests.e2e.harness import BerthServer

    server = BerthServer(tmp_path / "b", env={"BERTH_HOUSEKEEPING_SECONDS": "1"}).start()
    orphan = None
    try:
        async with server.client() as c:
            await create(c, "keeper")
            info = await wait_status(c, "keeper", "online")
            real = dict(
                item.split("=", 1)
                for item in Path(f"/proc/{info['pid']}/environ").read_text().split("\0")
                if item.startswith("BERTH_INSTANCE=")
            )
            env = {
                **os.environ,
                **real,
                "BERTH_WORKSPACE_ID": "no-such-workspace",
                "BERTH_STATE_DIR": str(tmp_path / "orphan"),
                "BERTH_PORT": "0",
            }
            orphan = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(60)"], env=env
            )
            t0 = asyncio.get_running_loop().time()
            while orphan.poll() is None and asyncio.get_running_loop().time() - t0 < 15:
                await asyncio.sleep(0.1)
            assert orphan.poll() is not None, "the orphan is still running"
            assert (await c.get("/v1/workspaces/keeper")).json()[
                "status"
            ] == "online"  # its own agent is kept
    finally:
        if orphan is not None and orphan.poll() is None:
            orphan.kill()
        server.stop()


async def test_finished_deliveries_are_pruned_after_the_retention_window(tmp_path):
    """Retention: finished deliveries stay for the idempotency window, then a background
    pass prunes them; queued ones are never touched."""
    from tests.e2e.harness import BerthServer

    server = BerthServer(
        tmp_path / "b",
        env={"BERTH_RETENTION_HOURS": str(2 / 3600), "BERTH_HOUSEKEEPING_SECONDS": "0.5"},
    ).start()
    try:
        async with server.client() as c:
            await create(c, "short-memory")
            r = await send(c, "short-memory", "remember briefly", "rb-1")
            did = r.headers["x-berth-delivery-id"]
            again = await send(c, "short-memory", "remember briefly", "rb-1")  # inside the window
            assert again.headers["x-berth-delivery-id"] == did
            await c.post("/v1/workspaces/short-memory/pause")
            held = (await send(c, "short-memory", "held", "rb-2", wait=0)).json()["delivery_id"]
            t0 = asyncio.get_running_loop().time()
            while (await c.get(f"/v1/deliveries/{did}")).status_code != 404:
                assert asyncio.get_running_loop().time() - t0 < 15, "not pruned"
                await asyncio.sleep(0.2)
            assert (await c.get(f"/v1/deliveries/{held}")).json()["status"] == "queued"
    finally:
        server.stop()
