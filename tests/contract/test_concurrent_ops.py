"""Concurrent accepts, claims and settles answer each caller as if the calls ran one by one.

The PostgreSQL store gathers concurrent calls of one operation into one statement (group
commit); memory and SQLite run them one after another. Either way every caller gets its own
item's outcome: these run on every backend (test_pg_group_commit.py checks that the
PostgreSQL runs here did go through batches).
"""

from __future__ import annotations

import asyncio

from berth.domain.delivery import DeliveryStatus
from berth.ports import Settle, Store
from tests.contract.conftest import Backend
from tests.contract.test_store import LEASE, T0, accept_many, claim, counts, ids, make_d

D = DeliveryStatus


async def test_concurrent_accepts_each_get_their_own_row(store: Store) -> None:
    earlier, _ = await store.accept(make_d("w1", "old", request=b"first"))
    ds = [make_d(f"w{i % 3}", f"m{i}", request=f"r{i}".encode()) for i in range(20)]
    dup = make_d("w1", "old", request=b"second")  # already accepted: the earlier row
    twin_a = make_d("w2", "twin", request=b"a")  # the same message twice, at once
    twin_b = make_d("w2", "twin", request=b"b")
    got = await asyncio.gather(*(store.accept(d) for d in [*ds, dup, twin_a, twin_b]))
    for d, (stored, created) in zip(ds, got[:20], strict=True):
        assert created and stored.id == d.id and stored.request == d.request
        d.seq = stored.seq
        assert stored == d
    assert got[20] == (earlier, False)
    (a, a_new), (b, b_new) = got[21], got[22]
    assert sorted([a_new, b_new]) == [False, True] and a == b  # one row, both callers see it
    assert await store.find_delivery("w2", "twin") == a
    seqs = [s.seq for s, _ in got[:20]] + [a.seq]
    assert len(set(seqs)) == 21 and min(seqs) > earlier.seq
    assert (await counts(store, "w0", "w1", "w2"))[D.QUEUED] == 22


async def test_concurrent_claims_of_many_workspaces(store: Store) -> None:
    queued = {f"w{i}": await accept_many(store, f"w{i}", 5) for i in range(6)}
    await claim(store, "w5", capacity=None, owner="x")  # w5: all in flight already
    caps: dict[str, int | None] = {"w0": 2, "w1": 1, "w2": None, "w3": 0, "w4": 5, "w5": 3}
    got = await asyncio.gather(
        *(
            store.claim(ws, capacity=cap, owner=f"o-{ws}", lease_seconds=LEASE, now=T0 + 1)
            for ws, cap in caps.items()
        )
    )
    expect = {"w0": 2, "w1": 1, "w2": 5, "w3": 0, "w4": 5, "w5": 0}
    for (ws, _), claimed in zip(caps.items(), got, strict=True):
        assert ids(claimed) == ids(queued[ws][: expect[ws]])  # the oldest, in order
        for d in claimed:
            assert (d.workspace_id, d.status, d.lease_owner) == (ws, D.IN_FLIGHT, f"o-{ws}")
            assert d.lease_until == T0 + 1 + LEASE and d.forwards == 1


async def test_concurrent_claims_of_one_workspace_share_its_capacity(store: Store) -> None:
    ds = await accept_many(store, "w1", 6)
    got = await asyncio.gather(*(claim(store, "w1", capacity=3, owner=f"o{i}") for i in range(4)))
    assert sorted(d.id for c in got for d in c) == sorted(ids(ds[:3]))
    assert (await counts(store, "w1"))[D.IN_FLIGHT] == 3


async def test_concurrent_settles_each_check_their_own_move(store: Store) -> None:
    ds = await accept_many(store, "w1", 6)
    await claim(store, "w1", owner="a")
    earlier = Settle(D.QUEUED, reply=b"partial", reply_status=500)  # a reply kept by DEAD below
    assert await store.settle(ds[5].id, "a", earlier, T0) is not None
    await claim(store, "w1", owner="a", now=T0 + 1)
    calls = [
        (ds[0].id, "a", Settle(D.DONE, reply=b"ok", reply_status=200, reply_type="x/y")),
        (ds[1].id, "a", Settle(D.QUEUED, count_attempt=True, reason="t", not_before=T0 + 9)),
        (ds[2].id, "b", Settle(D.DONE)),  # not the lease owner
        ("nope", "a", Settle(D.DONE)),  # no such delivery
        (ds[3].id, "a", Settle(D.DONE, reply=b"one", reply_status=200)),
        (ds[3].id, "a", Settle(D.DONE, reply=b"two", reply_status=200)),  # the same, twice
        (ds[5].id, "a", Settle(D.DEAD, count_attempt=True, reason="poison")),
    ]
    got = await asyncio.gather(*(store.settle(i, o, how, T0 + 2) for i, o, how in calls))
    done, requeued, wrong_owner, missing, one, two, dead = got
    assert done is not None and (done.status, done.reply, done.reply_type) == (D.DONE, b"ok", "x/y")
    assert done.finished_at == T0 + 2 and done.lease_owner is None
    assert requeued is not None and requeued.status is D.QUEUED and requeued.attempts == 1
    assert requeued.not_before == T0 + 9 and requeued.finished_at is None
    assert wrong_owner is None and missing is None
    assert (one is None) != (two is None)  # exactly one of the two settles moved it
    assert dead is not None and (dead.status, dead.reply, dead.attempts) == (D.DEAD, b"partial", 1)
    for d in (done, requeued, dead, one or two):
        assert d is not None and await store.get_delivery(d.id) == d
    assert (await store.get_delivery(ds[2].id)).status is D.IN_FLIGHT


async def test_replicas_claiming_many_workspaces_keep_each_capacity(backend: Backend) -> None:
    """Four stores (replicas), each claiming for eight workspaces at once, capacity 1 each."""
    stores = [await backend.open() for _ in range(4)]
    wss = [f"w{i}" for i in range(8)]
    total = 0
    for ws in wss:
        total += len(await accept_many(stores[0], ws, 6))
    holding: dict[str, set[str]] = {ws: set() for ws in wss}
    worst = 0
    settled: list[str] = []

    async def loop(r: int, store: Store, ws: str) -> None:
        nonlocal worst
        while len(settled) < total:
            got = await store.claim(ws, capacity=1, owner=f"r{r}", lease_seconds=LEASE, now=T0)
            if not got:
                await asyncio.sleep(0.002)
                continue
            holding[ws].update(ids(got))
            worst = max(worst, len(holding[ws]))
            await asyncio.sleep(0)
            holding[ws].difference_update(ids(got))
            for d in got:
                assert await store.settle(d.id, f"r{r}", Settle(D.DONE), T0) is not None
                settled.append(d.id)

    loops = [loop(r, s, ws) for r, s in enumerate(stores) for ws in wss]
    await asyncio.wait_for(asyncio.gather(*loops), 30)
    assert worst == 1 and len(settled) == len(set(settled)) == total
    assert (await counts(stores[0], *wss))[D.DONE] == total
