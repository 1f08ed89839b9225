"""The Store's operations over every workspace at once, on every adapter: the grouped
backlog read agrees with the per-workspace reads it replaces, and heartbeats flushed in
one write land where they belong and never go back in time."""

from __future__ import annotations

import asyncio

import pytest

from berth.domain.delivery import DeliveryStatus
from berth.ports import Pending, Settle, Store
from tests.contract.conftest import fresh_schema
from tests.contract.test_store import T0, accept_many, cancel, claim, make_d, make_ws, retry

D = DeliveryStatus


async def test_backlogs_match_the_per_workspace_reads(store: Store) -> None:
    ws_ids = [f"w{i:02d}" for i in range(40)]
    for i, ws_id in enumerate(ws_ids):
        ds = [
            (await store.accept(make_d(ws_id, f"m{j}", created_at=T0 + 10 * i + j)))[0]
            for j in range(i % 5)
        ]
        if i % 4 == 1 and len(ds) > 1:
            await cancel(store, ds[-1].id, T0, "x")
        if i % 7 == 2 and len(ds) > 1:  # the head canceled, then retried: to the back, same age
            await cancel(store, ds[0].id, T0, "x")
            await retry(store, ds[0].id, T0 + i)
        if i % 3 == 0 and ds:
            await claim(store, ws_id, capacity=1 + i % 2, now=T0 + i)  # some in flight
    got = await store.backlogs()
    for ws_id in [*ws_ids, "none"]:
        queued, in_flight = await store.pending(ws_id)
        want = Pending(queued, in_flight, await store.queue_head(ws_id))
        if queued or in_flight:
            assert got[ws_id] == want, ws_id
        else:
            assert ws_id not in got, ws_id
    assert set(got) <= set(ws_ids)
    assert sum(p.in_flight for p in got.values()) > 0  # the mix covered in-flight rows
    assert any(p.queued and not p.in_flight for p in got.values())


async def test_backlogs_head_follows_the_queue_order_not_the_age(store: Store) -> None:
    """A retried delivery goes to the back of the queue keeping its created_at: the head is
    the first by seq, as `queue_head` has it, even when an older one waits behind it."""
    first, a, b = await accept_many(store, "w1", 3)
    await claim(store, "w1", capacity=1)
    await store.settle(first.id, "a", Settle(D.DONE), T0)
    await store.accept(make_d("w1", "late", created_at=T0 + 50))
    await cancel(store, a.id, T0, "x")
    await retry(store, a.id, T0 + 60)  # created_at T0, now last in the queue
    got = await store.backlogs()
    assert got["w1"] == Pending(3, 0, await store.queue_head("w1"))
    assert got["w1"].head == b.created_at == T0
    await cancel(store, b.id, T0, "x")
    assert (await store.backlogs())["w1"] == Pending(2, 0, T0 + 50)
    assert await store.queue_head("w1") == T0 + 50


async def test_backlogs_of_an_empty_log(store: Store) -> None:
    assert await store.backlogs() == {}


async def test_record_heartbeats_in_one_write(store: Store) -> None:
    one, two, three = make_ws("one"), make_ws("two", token_hash="t2"), make_ws("three")
    for ws in (one, two, three):
        await store.create_workspace(ws)
    await store.update_workspace(two.id, last_heartbeat=T0 + 100)
    await store.record_heartbeats({one.id: T0 + 5, two.id: T0 + 50, "gone": T0 + 7})
    # the later of the record's beat and the recorded one: never backwards; none for three
    assert await store.last_heartbeats() == {one.id: T0 + 5, two.id: T0 + 100}
    await store.record_heartbeats({})
    await store.record_heartbeats({one.id: T0 + 9, two.id: T0 + 150})
    await store.record_heartbeats({one.id: T0 + 8})  # an older beat flushed late
    assert await store.last_heartbeats() == {one.id: T0 + 9, two.id: T0 + 150}
    await store.update_workspace(one.id, last_heartbeat=T0 + 20)  # a registration, a probe
    assert (await store.last_heartbeats())[one.id] == T0 + 20
    await store.delete_workspace(one.id)
    assert await store.last_heartbeats() == {two.id: T0 + 150}
    await store.create_workspace(one)  # the same id again: no beat of the one removed
    assert await store.last_heartbeats() == {two.id: T0 + 150}


@pytest.mark.postgres
async def test_flushes_of_the_same_beats_in_other_orders_do_not_deadlock() -> None:
    """Two replicas flushing beats of the same workspaces, each in its own order (found by
    a review: the upsert, and the UPDATE before it, deadlocked without an order)."""
    from berth.adapters.sql.postgres import PostgresStore

    async with fresh_schema() as url:
        a, b = (PostgresStore(url, min_size=1, max_size=2) for _ in range(2))
        await a.migrate()
        await b.migrate()
        try:
            ids = []
            for i in range(1500):
                w = make_ws(f"w{i}")
                await a.create_workspace(w)
                ids.append(w.id)
            await a.record_heartbeats(dict.fromkeys(ids, T0))

            async def flush(store: PostgresStore, order: list[str]) -> None:
                for k in range(12):
                    await store.record_heartbeats({i: T0 + 1 + k for i in order})

            await asyncio.gather(flush(a, ids), flush(b, ids[::-1]))
            assert set((await a.last_heartbeats()).values()) == {T0 + 12}
        finally:
            await a.close()
            await b.close()
