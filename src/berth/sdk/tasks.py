"""A durable A2A task store in BERTH_STATE_DIR (a2a-sdk's DatabaseTaskStore on SQLite)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from a2a.server.context import ServerCallContext
from a2a.server.tasks import DatabaseTaskStore, TaskStore
from a2a.types import Task
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from berth.sdk.private import private_dir, private_file

log = logging.getLogger("berth.sdk")
__all__ = ["POOL", "durable_task_store"]

POOL = 32  # connections kept open; as many again opened for a burst, closed after it


class _Store(DatabaseTaskStore):
    """DatabaseTaskStore, calling `before_save` first (the SDK writes its pending execution
    records there, so a task is never on disk before the record that can close it)."""

    def __init__(self, engine: AsyncEngine, before_save: Callable[[], None] | None) -> None:
        super().__init__(engine, create_table=True)
        self._before_save = before_save

    async def save(self, task: Task, context: ServerCallContext) -> None:
        if self._before_save is not None:
            self._before_save()
        await super().save(task, context)


def durable_task_store(
    state_dir: Path, before_save: Callable[[], None] | None = None
) -> tuple[TaskStore, AsyncEngine]:
    private_dir(state_dir)
    db = private_file(state_dir / "tasks.sqlite")
    # a pool as deep as the sends an agent runs at once: SQLAlchemy's default (5, overflow
    # 10) closed and reopened a connection (an aiosqlite thread each) on most checkins at
    # 16 concurrent sends, ~40 % of the agent's time (bench/sdk.py --profile)
    engine = create_async_engine(f"sqlite+aiosqlite:///{db}", pool_size=POOL, max_overflow=POOL)
    return _Store(engine, before_save), engine
