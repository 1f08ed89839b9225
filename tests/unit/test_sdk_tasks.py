"""The SDK's task store keeps its connections across a burst of concurrent sends: a pool
that closed and reopened them (an aiosqlite thread each) cost an agent ~40 % of its time
at 16 concurrent sends (docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from a2a.server.context import ServerCallContext
from a2a.types import Task, TaskState, TaskStatus

from berth.sdk.tasks import POOL, durable_task_store


async def test_a_burst_of_concurrent_sends_leaves_every_connection_open(tmp_path: Path) -> None:
    store, engine = durable_task_store(tmp_path)
    await store.initialize()  # type: ignore[attr-defined]
    try:
        ctx = ServerCallContext()

        async def one(i: int) -> None:
            task = Task(
                id=f"t-{i}", context_id="c", status=TaskStatus(state=TaskState.TASK_STATE_WORKING)
            )
            await store.save(task, ctx)
            assert await store.get(f"t-{i}", ctx) is not None

        await asyncio.gather(*(one(i) for i in range(16)))
        pool = engine.pool
        assert pool.checkedout() == 0
        assert 16 <= pool.checkedin() <= POOL  # kept for the next burst, none closed
    finally:
        await engine.dispose()
