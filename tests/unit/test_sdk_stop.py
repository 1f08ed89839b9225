"""Issue #12: the SDK's stop, in one process (the real app, a2a-sdk, SQLite stores).

A stop cuts what the drain left running; the cut executions do their bookkeeping (recorded
as cut, their tasks closed as interrupted) while both stores are still open, and the stores
close after that. Also: the execution records are written lazily but always before a task
that they protect reaches the task store."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from a2a.server.context import ServerCallContext
from a2a.types import Task, TaskState, TaskStatus

from berth.examples.echo import EchoExecutor, card
from berth.sdk import AgentRuntime, build_app
from berth.sdk.dedupe import Dedupe
from berth.sdk.tasks import durable_task_store

V1 = {"a2a-version": "1.0"}


def _send(text: str, mid: str) -> dict:
    msg = {"role": "ROLE_USER", "messageId": mid, "parts": [{"text": text}]}
    return {"jsonrpc": "2.0", "id": 7, "method": "SendMessage", "params": {"message": msg}}


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BERTH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("BERTH_URL", raising=False)
    return tmp_path / "state"


@asynccontextmanager
async def running(state: Path) -> AsyncIterator[tuple[AgentRuntime, httpx.AsyncClient]]:
    rt = build_app(EchoExecutor(state), card("http://127.0.0.1/"), drain_seconds=30)
    async with rt.app.router.lifespan_context(rt.app):
        transport = httpx.ASGITransport(app=rt.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as c:
            yield rt, c


def _task_rows(state: Path) -> list[tuple[str, dict, dict | None]]:
    with sqlite3.connect(state / "tasks.sqlite") as db:
        rows = db.execute("SELECT id, status, metadata FROM tasks").fetchall()
    return [(r[0], json.loads(r[1]), json.loads(r[2]) if r[2] else None) for r in rows]


async def _wait_task_saved(state: Path) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (state / "tasks.sqlite").exists() and (rows := _task_rows(state)):
            return rows[0][0]
        await asyncio.sleep(0.02)
    raise AssertionError("the task was never saved")


def _problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_stop_mid_message_answers_draining_and_closes_the_task_first(
    state: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    async with running(state) as (rt, c):
        work = asyncio.create_task(
            c.post("/", json=_send("task sleep:30 cut me", "u-1"), headers=V1)
        )
        task_id = await _wait_task_saved(state)
        report = await rt.drain.drain(0.1)
        assert not report.drained and report.unfinished == ["u-1"]
        t0 = time.monotonic()
        await rt.stop()
        assert time.monotonic() - t0 < 5
        reply = (await asyncio.wait_for(work, 5)).json()
        assert reply["id"] == 7 and reply["error"]["data"]["reason"] == "DRAINING"
        # the bookkeeping is done while the stores are open: the task is closed ...
        task = await rt.store.get(task_id, ServerCallContext())
        assert task is not None and task.status.state == TaskState.TASK_STATE_CANCELED
        assert task.metadata.fields["berth.interrupted"].bool_value is True
        assert rt.drain.in_flight == []
        late = (await c.post("/", json=_send("too late", "u-late"), headers=V1)).json()
        assert late["error"]["data"]["reason"] == "DRAINING"
        await rt.stop()  # a second stop (the lifespan's) is a no-op
    assert rt.dedupe.closed
    # ... the execution is on disk as cut (not ended), so the redelivery can point to it ...
    d = Dedupe(state)
    assert d.cut_executions() == [("u-1", task_id)]
    assert d.lookup("u-1") is None  # ... and no response was stored: it runs again
    d.close()
    [(_, status, meta)] = _task_rows(state)
    assert status["state"] == "TASK_STATE_CANCELED" and meta == {"berth.interrupted": True}
    assert _problems(caplog) == []  # no "closed database", no a2a-sdk queue warnings


async def test_the_lifespan_alone_cuts_running_work_before_closing_the_stores(
    state: Path, caplog: pytest.LogCaptureFixture
):
    """Under a server that knows nothing of the drain (no `stop` call, no drain): leaving
    the lifespan must still end the executions before the stores close."""
    caplog.set_level(logging.DEBUG)
    async with running(state) as (rt, c):
        work = asyncio.create_task(c.post("/", json=_send("task sleep:30 cut", "u-2"), headers=V1))
        task_id = await _wait_task_saved(state)
        # Let a2a-sdk's consumer finish forwarding the first events (a drain would have given
        # it seconds): cancelled within moments of them, a2a-sdk 1.3 closes the subscribers'
        # queue under its own consumer and warns "Queue was closed during enqueuing".
        await asyncio.sleep(0.3)
    reply = (await asyncio.wait_for(work, 5)).json()
    assert reply["error"]["data"]["reason"] == "DRAINING"
    assert rt.dedupe.closed
    d = Dedupe(state)
    assert d.cut_executions() == [("u-2", task_id)]
    d.close()
    [(_, status, _meta)] = _task_rows(state)
    assert status["state"] == "TASK_STATE_CANCELED"
    assert _problems(caplog) == []


async def test_after_a_stop_the_next_start_points_the_cut_task_to_its_successor(state: Path):
    async with running(state) as (rt, c):
        work = asyncio.create_task(
            c.post("/", json=_send("task sleep:30 again", "u-3"), headers=V1)
        )
        old_id = await _wait_task_saved(state)
        await rt.stop()
        await work
    async with running(state) as (rt, c):
        again = (await c.post("/", json=_send("task again", "u-3"), headers=V1)).json()
        new_id = again["result"]["task"]["id"]
        assert new_id != old_id
        old = await rt.store.get(old_id, ServerCallContext())
        assert old is not None
        assert old.metadata.fields["berth.restarted_as"].string_value == new_id
    d = Dedupe(state)
    assert d.cut_executions() == []  # the second run ended: nothing is cut any more
    d.close()


# --- the execution records --------------------------------------------------------------


def _crash(d: Dedupe) -> None:
    """What is on disk if the process died now: close the connection without flushing."""
    d._db.close()


def test_an_execution_that_ends_before_any_task_is_saved_writes_nothing(tmp_path: Path):
    d = Dedupe(tmp_path)
    d.started("m-1", "t-1")
    d.ended("m-1")
    d.close()
    with sqlite3.connect(tmp_path / "dedupe.sqlite") as db:
        assert db.execute("SELECT count(*) FROM executions").fetchone() == (0,)


def test_a_start_not_yet_written_is_lost_in_a_crash_but_protects_nothing(tmp_path: Path):
    d = Dedupe(tmp_path)
    d.started("m-1", "t-1")
    _crash(d)
    assert Dedupe(tmp_path).cut_executions() == []


async def test_every_pending_start_is_on_disk_before_the_task_store_saves_a_task(tmp_path: Path):
    d = Dedupe(tmp_path)
    store, engine = durable_task_store(tmp_path, before_save=d.flush)
    await store.initialize()  # type: ignore[attr-defined]
    d.started("m-1", "t-1")
    d.started("m-2", "t-2")
    task = Task(id="t-1", context_id="c", status=TaskStatus(state=TaskState.TASK_STATE_WORKING))
    await store.save(task, ServerCallContext())
    await engine.dispose()
    _crash(d)  # the task is in the store; the process dies before either execution ends
    again = Dedupe(tmp_path)
    assert sorted(again.cut_executions()) == [("m-1", "t-1"), ("m-2", "t-2")]
    again.close()


def test_the_end_of_a_written_start_is_written_at_once(tmp_path: Path):
    d = Dedupe(tmp_path)
    d.started("m-1", "t-1")
    d.flush()
    d.ended("m-1")
    _crash(d)
    again = Dedupe(tmp_path)
    assert again.cut_executions() == []
    again.close()


def test_a_message_that_runs_again_after_a_cut_replaces_the_old_record_at_once(tmp_path: Path):
    d = Dedupe(tmp_path)
    d.started("m-1", "old")
    d.close()  # a stop: the pending start is written, never ended: a cut execution
    d = Dedupe(tmp_path)
    assert d.cut_execution("m-1") == "old"
    d.started("m-1", "new")  # the redelivery runs as a new task
    assert d.cut_execution("m-1") is None
    _crash(d)  # killed while the second run works: the record names the new task
    d = Dedupe(tmp_path)
    assert d.cut_executions() == [("m-1", "new")]
    d.close()


def test_a_closed_store_ignores_late_bookkeeping_instead_of_raising(tmp_path: Path):
    d = Dedupe(tmp_path)
    d.started("m-1", "t-1")
    d.flush()
    d.close()
    d.ended("m-1")
    d.finish("m-1", "SendMessage", b"{}")
    d.flush()
    d.close()
