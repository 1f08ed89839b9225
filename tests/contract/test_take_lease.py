"""take_lease: the fast lane hands an attempt it cannot finish to Python, which takes the
delivery's lease over with one conditional update (docs/fast-lane.md)."""

from __future__ import annotations

from berth.domain.delivery import DeliveryStatus as D
from berth.ports import Settle, Store
from tests.contract.test_store import T0, accept_many, claim


async def test_the_lease_moves_only_from_its_holder(store: Store) -> None:
    (a,) = await accept_many(store, "w1", 1)
    await claim(store, "w1", owner="r1:lane", now=T0)
    assert await store.take_lease(a.id, "someone-else", "r1") is None
    got = await store.take_lease(a.id, "r1:lane", "r1")
    assert got is not None and (got.id, got.status, got.lease_owner) == (a.id, D.IN_FLIGHT, "r1")
    assert got.forwards == 1 and got.lease_until == T0 + 30.0  # the attempt itself is unchanged
    assert await store.take_lease(a.id, "r1:lane", "r1") is None  # taken already
    assert await store.settle(a.id, "r1:lane", Settle(D.DONE), T0 + 1) is None  # not the lane's
    done = await store.settle(a.id, "r1", Settle(D.DONE, forward=1), T0 + 1)
    assert done is not None and done.status is D.DONE


async def test_only_an_in_flight_delivery_is_taken(store: Store) -> None:
    queued, released = await accept_many(store, "w1", 2)
    assert await store.take_lease(queued.id, "r1:lane", "r1") is None
    assert await store.take_lease("no-such-delivery", "r1:lane", "r1") is None
    await claim(store, "w1", owner="r1:lane", now=T0)
    await store.release_leases("r1:lane")  # the lane exited: both back in the queue
    assert await store.take_lease(released.id, "r1:lane", "r1") is None
    assert (await store.get_delivery(released.id)).status is D.QUEUED


async def test_leased_lists_the_workspaces_in_flight_ids_of_one_owner(store: Store) -> None:
    a, b, c = await accept_many(store, "w1", 3)
    (other,) = await accept_many(store, "w2", 1)
    await claim(store, "w1", capacity=2, owner="r1:lane", now=T0)  # a and b
    await claim(store, "w1", owner="r1", now=T0)  # c: Python's own
    await claim(store, "w2", owner="r1:lane", now=T0)
    assert await store.leased("w1", "r1:lane") == [a.id, b.id]
    assert await store.leased("w1", "r1") == [c.id]
    assert await store.leased("w2", "r1:lane") == [other.id]
    assert await store.take_lease(a.id, "r1:lane", "r1") is not None
    await store.settle(b.id, "r1:lane", Settle(D.DONE, forward=1), T0 + 1)
    assert await store.leased("w1", "r1:lane") == []
    assert await store.leased("w3", "r1:lane") == []
