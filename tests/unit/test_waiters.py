"""Waiters: a caller waiting for a delivery's final answer is woken by `resolve` (also one
that came between its `expect` and its `wait`), finds a delivery finalised without a
notice at its next look at the store, gives up at its deadline, and leaves nothing behind
however it ends."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from berth.domain.delivery import Delivery, DeliveryStatus
from berth.services.waiters import Waiters


def delivery(status: DeliveryStatus = DeliveryStatus.IN_FLIGHT) -> Delivery:
    now = time.time()
    return Delivery(
        id="d1", workspace_id="w", message_id="m", seq=1, method="SendMessage",
        request=b"{}", headers={}, created_at=now, updated_at=now, status=status,
    )  # fmt: skip


class Store:
    def __init__(self) -> None:
        self.current = delivery()
        self.reads = 0

    async def get_delivery(self, delivery_id: str) -> Delivery:
        self.reads += 1
        return self.current


def waiters(store: Store, poll: float = 5.0) -> Waiters:
    return Waiters(store, bus=None, poll_seconds=poll)  # type: ignore[arg-type]


async def test_resolve_wakes_every_waiter_of_the_delivery_and_leaves_nothing() -> None:
    store = Store()
    w = waiters(store)
    first = asyncio.create_task(w.wait("d1", 5, first=w.expect("d1")))
    second = asyncio.create_task(w.wait("d1", 5))
    await asyncio.sleep(0.01)
    done = delivery(DeliveryStatus.DONE)
    w.resolve(done)
    assert await first is done and await second is done
    assert store.reads == 1  # the accepting caller, expected before, skipped its first read
    assert w._futs == {}


async def test_a_delivery_finalised_without_a_notice_is_found_at_the_next_poll() -> None:
    store = Store()
    w = waiters(store, poll=0.05)
    task = asyncio.create_task(w.wait("d1", 5, first=w.expect("d1")))
    await asyncio.sleep(0.01)
    store.current = delivery(DeliveryStatus.DONE)  # settled elsewhere, the notice lost
    started = time.monotonic()
    got = await task
    assert got is store.current and time.monotonic() - started < 1
    assert w._futs == {}


async def test_the_deadline_answers_none_and_cancellation_cleans_up() -> None:
    store = Store()
    w = waiters(store, poll=0.02)
    started = time.monotonic()
    assert await w.wait("d1", 0.1) is None
    assert 0.09 <= time.monotonic() - started < 1
    assert store.reads >= 3  # it looked at the store every poll
    assert w._futs == {}
    task = asyncio.create_task(w.wait("d1", 5, first=w.expect("d1")))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert w._futs == {}
    w.resolve(delivery(DeliveryStatus.DONE))  # nobody waiting: nothing to do


async def test_a_resolve_after_one_waiter_left_still_reaches_the_other() -> None:
    store = Store()
    w = waiters(store)
    leaving = asyncio.create_task(w.wait("d1", 5, first=w.expect("d1")))
    staying = asyncio.create_task(w.wait("d1", 5, first=w.expect("d1")))
    await asyncio.sleep(0.01)
    leaving.cancel()
    await asyncio.gather(leaving, return_exceptions=True)
    done = delivery(DeliveryStatus.DONE)
    w.resolve(done)
    got: Any = await staying
    assert got is done and w._futs == {}


async def test_a_resolve_while_the_store_is_read_is_not_missed() -> None:
    """The store answers with the delivery as it was before its settle; the settle's
    resolve came while that read was under way: the waiter has it at once, not a poll
    (5 s here) later."""
    gate = asyncio.Event()

    class SlowStore(Store):
        async def get_delivery(self, delivery_id: str) -> Delivery:
            stale = self.current
            await gate.wait()
            return stale

    store = SlowStore()
    w = waiters(store, poll=5.0)
    task = asyncio.create_task(w.wait("d1", 10))
    await asyncio.sleep(0.01)  # the waiter is reading the store
    done = delivery(DeliveryStatus.DONE)
    w.resolve(done)
    gate.set()
    got = await asyncio.wait_for(task, 1)
    assert got is done and w._futs == {}


async def test_a_resolve_between_expect_and_wait_is_not_missed() -> None:
    """The proxy expects before the accept; the message is forwarded and settled by another
    task before the accept returns (a PostgreSQL flush, a notice to other replicas): the
    wait has it at once, without reading the store, not a poll (5 s here) later."""
    store = Store()
    w = waiters(store, poll=5.0)
    first = w.expect("d1")
    done = delivery(DeliveryStatus.DONE)
    w.resolve(done)  # store.current is still in flight: a read would not see it
    got = await asyncio.wait_for(w.wait("d1", 10, first=first), 1)
    assert got is done and store.reads == 0 and w._futs == {}


async def test_an_expect_no_wait_took_is_dropped() -> None:
    store = Store()
    w = waiters(store)
    kept, dropped = w.expect("d1"), w.expect("d1")
    w.drop("d1", dropped)
    w.drop("d1", dropped)  # twice: nothing
    assert w._futs == {"d1": {kept}}
    w.drop("d1", kept)
    assert w._futs == {}
    w.drop("d2", kept)  # never expected: nothing
