"""The per-workspace lifecycle lock: one restart, deploy, pause or removal at a time,
across replicas (a `Locks` lease, refreshed while held)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from berth.domain.errors import Conflict, LocksUnavailable
from berth.domain.workspace import Workspace
from berth.ports import Locks

log = logging.getLogger("berth.restart")
__all__ = ["JOIN_WAIT", "LOCK_TTL", "LifecycleLock", "busy"]

LOCK_TTL = 30.0
JOIN_WAIT = 120.0  # how long pause/remove/deploy wait for a running cycle to finish


class LifecycleLock:
    def __init__(self, locks: Locks) -> None:
        self._locks = locks

    async def try_acquire(self, ws_id: str) -> str | None:
        return await self._locks.acquire(_key(ws_id), LOCK_TTL)

    async def release(self, ws_id: str, token: str) -> None:
        await self._locks.release(_key(ws_id), token)

    async def acquire(self, ws: Workspace, timeout: float) -> str:
        """Take the workspace's lifecycle lock, waiting up to `timeout` for its holder."""
        deadline = time.monotonic() + timeout
        while True:
            token = await self.try_acquire(ws.id)
            if token is not None:
                return token
            if time.monotonic() > deadline:
                raise busy(ws)
            await asyncio.sleep(0.05)

    @asynccontextmanager
    async def holding(self, ws_id: str, token: str) -> AsyncIterator[None]:
        """Keep the lock (refreshed) for the block; release it after."""

        async def keep() -> None:
            while True:
                await asyncio.sleep(LOCK_TTL / 3)
                try:
                    if not await self._locks.refresh(_key(ws_id), token, LOCK_TTL):
                        log.error("lost the restart lock of %s", ws_id)
                        return
                except LocksUnavailable as e:  # Redis is away: keep going, retry the refresh
                    log.warning("could not refresh the restart lock of %s: %s", ws_id, e)

        keeper = asyncio.create_task(keep())
        try:
            yield
        finally:
            keeper.cancel()
            try:
                await self._locks.release(_key(ws_id), token)
            except LocksUnavailable as e:  # it expires by itself within LOCK_TTL
                log.warning("could not release the restart lock of %s: %s", ws_id, e)


def _key(ws_id: str) -> str:
    return f"lifecycle:{ws_id}"


def busy(ws: Workspace) -> Conflict:
    return Conflict(f"workspace {ws.name} is busy with another operation; try again", code="busy")
