"""`accept_claim` on every store: accept, then claim as `claim` does (oldest first, up to
the free capacity), and nothing claimed for a duplicate."""

from __future__ import annotations

import asyncio

from berth.domain.delivery import DeliveryStatus as D
from berth.ports import Store
from tests.contract.test_store import LEASE, T0, make_d


async def _accept_claim(
    store: Store, msg: str, capacity: int | None = 2
) -> tuple[str, bool, list[str]]:
    d, created, got = await store.accept_claim(
        make_d("w1", msg), capacity=capacity, owner="me", lease_seconds=LEASE, now=T0 + 1
    )
    return d.status.value, created, [g.message_id for g in got]


async def test_accept_claim_claims_the_new_message_of_an_idle_workspace(store: Store) -> None:
    assert await _accept_claim(store, "m1") == ("in_flight", True, ["m1"])
    d = await store.find_delivery("w1", "m1")
    assert d is not None and d.status is D.IN_FLIGHT and d.lease_owner == "me"
    assert d.lease_until == T0 + 1 + LEASE and d.forwards == 1 and d.first_forwarded_at == T0 + 1


async def test_accept_claim_takes_the_oldest_first_and_respects_capacity(store: Store) -> None:
    await store.accept(make_d("w1", "old"))
    assert await _accept_claim(store, "m1") == ("in_flight", True, ["old", "m1"])
    # full: accepted, left queued
    assert await _accept_claim(store, "m2") == ("queued", True, [])
    assert await _accept_claim(store, "m3", capacity=None) == ("in_flight", True, ["m2", "m3"])
    assert (await store.pending("w1")) == (0, 4)


async def test_accept_claim_of_a_duplicate_claims_nothing(store: Store) -> None:
    await store.accept(make_d("w1", "queued-first"))
    await store.accept(make_d("w1", "m1"))
    assert await _accept_claim(store, "m1") == ("queued", False, [])
    assert (await store.pending("w1")) == (2, 0)


async def test_accept_claim_returns_the_delivery_as_stored(store: Store) -> None:
    d, created, got = await store.accept_claim(
        make_d("w1", "m1"), capacity=2, owner="me", lease_seconds=LEASE, now=T0 + 1
    )
    stored = await store.find_delivery("w1", "m1")
    assert created and got == [d] and stored is not None
    assert d == stored  # seq, lease, forwards, times: what a later read gives


async def test_accept_claim_is_not_held_up_by_a_held_retry_but_by_a_full_workspace(
    store: Store,
) -> None:
    await store.accept(make_d("w1", "held", not_before=T0 + 3600))  # a retry waiting its turn
    assert await _accept_claim(store, "m1", capacity=1) == ("in_flight", True, ["m1"])
    # one in flight of capacity 1: accepted, queued, nothing claimed
    assert await _accept_claim(store, "m2", capacity=1) == ("queued", True, [])
    # a duplicate of the message in flight is the delivery in flight, not a new one
    assert await _accept_claim(store, "m1", capacity=None) == ("in_flight", False, [])
    assert (await store.pending("w1")) == (2, 1)


async def test_accept_claim_in_a_batch_after_an_accept_claims_that_one_first(
    store: Store,
) -> None:
    """On SQLite both writes share one transaction (group commit): the claim sees the
    accept written before it in the same batch, so order holds there too."""
    _, (d, created, got) = await asyncio.gather(
        store.accept(make_d("w1", "first")),
        store.accept_claim(
            make_d("w1", "second"), capacity=None, owner="me", lease_seconds=LEASE, now=T0 + 1
        ),
    )
    assert created and [g.message_id for g in got] == ["first", "second"]
    assert d.message_id == "second" and d.status is D.IN_FLIGHT


async def test_accept_claim_leaves_a_message_held_for_later_queued(store: Store) -> None:
    d, created, got = await store.accept_claim(
        make_d("w1", "later", not_before=T0 + 60),
        capacity=None,
        owner="me",
        lease_seconds=LEASE,
        now=T0 + 1,
    )
    assert created and got == [] and d.status is D.QUEUED
