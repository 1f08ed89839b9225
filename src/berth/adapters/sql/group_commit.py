"""Group commit: concurrent calls of one store operation share one statement and one commit.

A call joins the batch being gathered. A batch is flushed as soon as fewer than `lanes`
flushes of the operation are running, so a call made while the store is idle is flushed on
the next turn of the event loop (no timer), and calls made while a flush runs wait for it
and go together in the next one. Each caller awaits its own item's result, which is only
set once the flush's commit has returned.

A batch of one runs the operation's own single-item code (`one`). A batch whose statement
fails for any reason but the store being away (StoreUnavailable) was rolled back whole, so
its items are run again one by one: one item's error stays that item's own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

from berth.domain.errors import StoreUnavailable

log = logging.getLogger("berth.group_commit")
A = TypeVar("A")
R = TypeVar("R")
__all__ = ["GroupCommit", "ItemError"]


class ItemError:
    """A flush's result for one item that failed on its own after the flush's statement
    succeeded (the others' results stand): its caller gets `error`."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class GroupCommit(Generic[A, R]):
    def __init__(
        self,
        many: Callable[[list[A]], Awaitable[Sequence[R]]],
        one: Callable[[A], Awaitable[R]],
        *,
        key: Callable[[A], Hashable],
        max_batch: int = 256,
        lanes: int = 1,
    ) -> None:
        self._many, self._one, self._key = many, one, key
        self._max, self._lanes = max_batch, lanes
        self._pending: list[tuple[A, asyncio.Future[R]]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._flushing: set[Hashable] = set()  # keys of the calls being flushed
        self.batches = 0  # flushes made, and the items they carried (for benchmarks)
        self.items = 0
        self.retried = 0  # items of failed batches, run again one by one

    async def __call__(self, item: A) -> R:
        if self._max == 1:  # group commit off: each call runs alone, in its caller's task
            self.batches += 1
            self.items += 1
            return await self._one(item)
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if len(self._running) < self._lanes:
            self._running.add(asyncio.create_task(self._drain()))
        return await fut

    async def idle(self) -> None:
        """Wait until every call made so far has its result (before the pool closes)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _take(self) -> list[tuple[A, asyncio.Future[R]]]:
        """The next batch: in arrival order, at most one item per key, and none whose key is
        being flushed (a later call with the same key waits for a later flush, so it sees the
        earlier one's effect, as if sequential)."""
        batch: list[tuple[A, asyncio.Future[R]]] = []
        rest: list[tuple[A, asyncio.Future[R]]] = []
        for entry in self._pending:
            k = self._key(entry[0])
            if len(batch) >= self._max or k in self._flushing:
                rest.append(entry)
            else:
                self._flushing.add(k)
                batch.append(entry)
        self._pending = rest
        return batch

    async def _drain(self) -> None:
        batch: list[tuple[A, asyncio.Future[R]]] = []
        try:
            while self._pending:
                batch = self._take()
                if not batch:  # every pending key is being flushed by another lane
                    return
                try:
                    await self._flush(batch)
                finally:
                    self._flushing.difference_update(self._key(item) for item, _ in batch)
                # one turn of the loop: the callers just answered may call again at once
                # (a producer's next message) and join the next flush instead of the one after
                await asyncio.sleep(0)
        except BaseException:  # cancelled (the loop is closing): leave no caller hanging
            gone = StoreUnavailable("the store closed before this operation ran")
            for _, fut in batch + self._pending:
                _fail(fut, gone)
            self._pending = []
            raise
        finally:
            # at once, not in a done callback: a call made after the loop above saw no
            # pending item must find this drain gone and start another
            self._running.discard(asyncio.current_task())

    async def _flush(self, batch: list[tuple[A, asyncio.Future[R]]]) -> None:
        self.batches += 1
        self.items += len(batch)
        if len(batch) == 1:
            await self._run_one(*batch[0])
            return
        try:
            results = await self._many([item for item, _ in batch])
        except StoreUnavailable as e:
            for _, fut in batch:
                _fail(fut, e)
            return
        except Exception as e:
            log.info("a flush of %d calls failed (%r); running them one by one", len(batch), e)
            self.retried += len(batch)
            for entry in batch:  # rolled back whole: each item alone
                await self._run_one(*entry)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if isinstance(result, ItemError):
                _fail(fut, result.error)
            else:
                _succeed(fut, result)

    async def _run_one(self, item: A, fut: asyncio.Future[R]) -> None:
        try:
            result = await self._one(item)
        except Exception as e:
            _fail(fut, e)
        else:
            _succeed(fut, result)


def _succeed(fut: asyncio.Future[R], result: R) -> None:
    if not fut.done():  # done: the caller was cancelled (its item ran all the same)
        fut.set_result(result)


def _fail(fut: asyncio.Future[R], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
