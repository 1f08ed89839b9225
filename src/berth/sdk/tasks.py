"""A durable A2A task store in BERTH_STATE_DIR (a2a-sdk's DatabaseTaskStore on SQLite)."""

from __future__ import annotations

import logging
from pathlib import Path

from a2a.server.tasks import DatabaseTaskStore, TaskStore
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger("berth.sdk")
__all__ = ["durable_task_store"]


def durable_task_store(state_dir: Path) -> tuple[TaskStore, AsyncEngine]:
    state_dir.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(f"sqlite+aiosqlite:///{state_dir / 'tasks.sqlite'}")
    return DatabaseTaskStore(engine, create_table=True), engine
