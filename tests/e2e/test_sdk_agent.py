"""The agent SDK on its own (CONTRACT §8): a real `python -m berth.examples.echo` process,
spoken to over HTTP as berth speaks to it, with no berth in between."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import executions, free_port, reply_text, send_body

V1 = {"a2a-version": "1.0"}


class Echo:
    def __init__(self, state: Path, drain_seconds: float = 30) -> None:
        self.state = state
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.drain_seconds = drain_seconds
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Echo:
        env = {
            **os.environ,
            "BERTH_STATE_DIR": str(self.state),
            "BERTH_PORT": str(self.port),
            "BERTH_DRAIN_SECONDS": str(self.drain_seconds),
        }
        env.pop("BERTH_URL", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "berth.examples.echo"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.state.parent / "echo.log", "ab"),
        )
        deadline = time.monotonic() + 60  # a busy shared machine can take that long
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.kill9()  # never leave it running behind a failed test
        raise RuntimeError("echo did not start")

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[Echo]:
    e = Echo(tmp_path / "state").start()
    yield e
    e.kill9()


def client(e: Echo) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=e.url, timeout=30)


async def signal_drain(c: httpx.AsyncClient, seconds: float) -> dict:
    r = await c.post(
        "/signals/restart_pending",
        json={
            "jsonrpc": "2.0",
            "id": "sig",
            "method": "restart_pending",
            "params": {"drain_seconds": seconds, "reason": "test"},
        },
    )
    assert r.status_code == 200
    return r.json()["result"]


async def test_drain_signal_returns_when_in_flight_work_is_done(echo: Echo):
    async with client(echo) as c:
        work = asyncio.create_task(
            c.post("/", json=send_body("sleep:1 finish me", "w-1"), headers=V1)
        )
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        report = await signal_drain(c, 20)
        took = time.monotonic() - t0
        assert report == {"drained": True, "in_flight": 0, "completed": ["w-1"], "unfinished": []}
        assert took < 3  # it answered when the work ended, not after drain_seconds
        assert reply_text((await work).json()) == "echo: sleep:1 finish me"


async def test_while_draining_sends_are_refused_and_reads_keep_working(echo: Echo):
    async with client(echo) as c:
        r = await c.post("/", json=send_body("task first", "t-1"), headers=V1)
        task_id = r.json()["result"]["task"]["id"]
        slow = asyncio.create_task(c.post("/", json=send_body("sleep:3 slow", "w-2"), headers=V1))
        await asyncio.sleep(0.3)
        report = await signal_drain(c, 0.3)
        assert report["drained"] is False and report["unfinished"] == ["w-2"]
        refused = await c.post("/", json=send_body("new work", "w-3", rid=7), headers=V1)
        assert refused.status_code == 200
        err = refused.json()["error"]
        assert (
            refused.json()["id"] == 7
            and err["code"] == -32603
            and err["data"]["reason"] == "DRAINING"
        )
        got = await c.post(
            "/",
            json={"jsonrpc": "2.0", "id": 2, "method": "GetTask", "params": {"id": task_id}},
            headers=V1,
        )
        assert got.json()["result"]["status"]["state"] == "TASK_STATE_COMPLETED"
        assert (await c.get("/healthz")).json()["status"] == "draining"
        await c.post("/signals/resume", json={"jsonrpc": "2.0", "id": 3, "method": "resume"})
        assert (
            reply_text((await c.post("/", json=send_body("after", "w-4"), headers=V1)).json())
            == "echo: after"
        )
        await slow
    starts, _ = executions(echo.state)
    assert "w-3" not in starts  # the refused send never ran


async def test_duplicates_run_once_and_get_the_same_reply(echo: Echo):
    async with client(echo) as c:
        first = await c.post("/", json=send_body("once", "dup-1", rid=1), headers=V1)
        again = await c.post("/", json=send_body("once", "dup-1", rid=2), headers=V1)
        assert again.json()["id"] == 2 and again.json()["result"] == first.json()["result"]
        together = await asyncio.gather(
            *[
                c.post("/", json=send_body("sleep:0.5 together", "dup-2", rid=i), headers=V1)
                for i in range(5)
            ]
        )
        results = {json.dumps(r.json()["result"], sort_keys=True) for r in together}
        assert len(results) == 1 and [r.json()["id"] for r in together] == list(range(5))
    starts, dones = executions(echo.state)
    assert starts["dup-1"] == dones["dup-1"] == 1 and starts["dup-2"] == dones["dup-2"] == 1


async def test_dedupe_survives_a_restart_of_the_agent(tmp_path: Path):
    e = Echo(tmp_path / "state").start()
    try:
        async with client(e) as c:
            first = (await c.post("/", json=send_body("remember me", "keep-1"), headers=V1)).json()
        e.kill9()
        e = Echo(tmp_path / "state").start()
        async with client(e) as c:
            again = (await c.post("/", json=send_body("remember me", "keep-1"), headers=V1)).json()
        assert again["result"] == first["result"]
        starts, _ = executions(e.state)
        assert starts["keep-1"] == 1
    finally:
        e.kill9()


async def test_sigterm_drains_then_exits_zero(echo: Echo):
    async with client(echo) as c:
        work = asyncio.create_task(
            c.post("/", json=send_body("sleep:1 on sigterm", "term-1"), headers=V1)
        )
        await asyncio.sleep(0.3)
        assert echo.proc is not None
        echo.proc.send_signal(signal.SIGTERM)
        reply = await work
        assert reply_text(reply.json()) == "echo: sleep:1 on sigterm"
        assert await asyncio.to_thread(echo.proc.wait, 10) == 0
    starts, dones = executions(echo.state)
    assert dones["term-1"] == 1


async def test_tasks_survive_a_restart_and_a_cut_task_points_to_its_successor(tmp_path: Path):
    e = Echo(tmp_path / "state").start()
    try:
        async with client(e) as c:
            done = (
                await c.post("/", json=send_body("task finished before", "tk-1"), headers=V1)
            ).json()
            done_id = done["result"]["task"]["id"]
            cut = await c.post("/", json=send_body("task sleep:0.2 never mind", "tk-0"), headers=V1)
            assert cut.status_code == 200
            # a stream shows the task id at once; the execution is then cut by kill -9
            async with c.stream(
                "POST",
                "/",
                json={**send_body("task sleep:5 cut me", "tk-2"), "method": "SendStreamingMessage"},
                headers=V1,
            ) as s:
                async for line in s.aiter_lines():
                    if line.startswith("data: "):
                        cut_id = json.loads(line[6:])["result"]["task"]["id"]
                        break
        e.kill9()
        e = Echo(tmp_path / "state").start()
        async with client(e) as c:

            async def get(task_id: str) -> dict:
                r = await c.post(
                    "/",
                    json={
                        "jsonrpc": "2.0",
                        "id": 9,
                        "method": "GetTask",
                        "params": {"id": task_id},
                    },
                    headers=V1,
                )
                return r.json()["result"]

            assert (await get(done_id))["status"]["state"] == "TASK_STATE_COMPLETED"
            interrupted = await get(cut_id)  # not `working` forever: closed at start
            assert interrupted["status"]["state"] == "TASK_STATE_CANCELED"
            assert interrupted["metadata"]["berth.interrupted"] is True
            redo = (
                await c.post("/", json=send_body("task sleep:0.2 cut me", "tk-2"), headers=V1)
            ).json()
            new_id = redo["result"]["task"]["id"]
            assert (
                new_id != cut_id
                and redo["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
            )
            old = await get(cut_id)
            assert old["metadata"]["berth.restarted_as"] == new_id
            assert new_id in old["status"]["message"]["parts"][0]["text"]
            v03 = await c.post(
                "/",
                json={"jsonrpc": "2.0", "id": 10, "method": "tasks/get", "params": {"id": cut_id}},
            )
            assert v03.json()["result"]["metadata"]["berth.restarted_as"] == new_id
    finally:
        e.kill9()


async def test_a_caller_hanging_up_mid_stream_does_not_leave_work_counted(echo: Echo):
    async with client(echo) as c:
        async with c.stream(
            "POST",
            "/",
            json={**send_body("task sleep:0.5 bye", "hang-1"), "method": "SendStreamingMessage"},
            headers=V1,
        ) as s:
            async for line in s.aiter_lines():
                if line.startswith("data: "):
                    break  # hang up after the first event
        deadline = time.monotonic() + 5
        while (await c.get("/healthz")).json()["in_flight"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert (await c.get("/healthz")).json()["in_flight"] == 0
        assert (await signal_drain(c, 5))["drained"] is True


async def test_signal_with_bad_input_is_a_jsonrpc_error(echo: Echo):
    async with client(echo) as c:
        r = await c.post("/signals/restart_pending", content=b"{nope")
        assert r.json()["error"]["code"] == -32700
        r = await c.post(
            "/signals/restart_pending",
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "restart_pending",
                "params": {"drain_seconds": -1},
            },
        )
        assert r.json()["error"]["code"] == -32602
        assert (await c.get("/healthz")).json()["status"] == "ok"  # a bad signal starts no drain


def _clean(log: Path) -> list[str]:
    return [
        line
        for line in log.read_text().splitlines()
        if re.search("Traceback|ERROR|Exception", line)
    ]


async def test_sigterm_after_a_drain_that_ran_out_does_not_drain_again(tmp_path: Path):
    """berth's restart: the signal's drain times out, then SIGTERM. The agent (30 s window)
    must cut the message at once, answer it DRAINING, and exit cleanly."""
    e = Echo(tmp_path / "state", drain_seconds=30).start()
    try:
        async with client(e) as c:
            work = asyncio.create_task(
                c.post("/", json=send_body("sleep:20 x", "cut-1"), headers=V1)
            )
            await asyncio.sleep(0.5)
            report = await signal_drain(c, 1)
            assert report["unfinished"] == ["cut-1"]
            assert e.proc is not None
            t0 = time.monotonic()
            e.proc.send_signal(signal.SIGTERM)
            reply = (await work).json()
            assert reply["error"]["data"]["reason"] == "DRAINING"
            assert await asyncio.to_thread(e.proc.wait, 20) == 0
            assert time.monotonic() - t0 < 10  # not another 30 s window
    finally:
        e.kill9()
    assert _clean(tmp_path / "echo.log") == []
    starts, dones = executions(e.state)
    assert starts["cut-1"] == 1 and dones["cut-1"] == 0


async def test_sigterm_alone_drains_its_window_then_cuts_cleanly(tmp_path: Path):
    """`docker stop` or `kill`: no signal from berth; SIGTERM drains for drain_seconds."""
    e = Echo(tmp_path / "state", drain_seconds=1).start()
    try:
        async with client(e) as c:
            work = asyncio.create_task(
                c.post("/", json=send_body("sleep:20 y", "cut-2"), headers=V1)
            )
            await asyncio.sleep(0.5)
            assert e.proc is not None
            t0 = time.monotonic()
            e.proc.send_signal(signal.SIGTERM)
            reply = (await work).json()
            took = time.monotonic() - t0
            assert reply["error"]["data"]["reason"] == "DRAINING"
            assert 0.9 < took < 5  # the window, then the cut
            assert await asyncio.to_thread(e.proc.wait, 20) == 0
    finally:
        e.kill9()
    assert _clean(tmp_path / "echo.log") == []
