"""The Store contract: every adapter must behave exactly like this, whatever its database.

Each test runs once per backend (see conftest.py). The SQLite adapter is the reference;
a test that only one adapter fails is a bug in that adapter, not a reason to branch here.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from berth.adapters.memory_bus import MemoryBus
from berth.domain.delivery import Delivery, DeliveryStatus
from berth.domain.errors import Conflict, IllegalTransition, NotFound
from berth.domain.lifecycle import WorkspaceState, can_move
from berth.domain.restart import Phase, PhaseTiming, RestartRecord, Trigger
from berth.domain.workspace import RestartPolicy, Runtime, Workspace
from berth.metrics import Metrics
from berth.ports import Settle, Store
from berth.services.delivery_log import DeliveryLog
from berth.services.events import Events
from tests.contract.conftest import Backend

D = DeliveryStatus
S = WorkspaceState
T0 = 1000.0
LEASE = 30.0


# builders -------------------------------------------------------------------
def make_ws(name: str = "alpha", **kw: Any) -> Workspace:
    fields: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "name": name,
        "runtime": Runtime.PROCESS,
        "command": ["python", "-m", "agent"],
        "token_hash": f"tok-{name}",
        "created_at": T0,
        "updated_at": T0,
    }
    fields.update(kw)
    return Workspace(**fields)


def make_d(ws_id: str, msg: str, **kw: Any) -> Delivery:
    fields: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "workspace_id": ws_id,
        "message_id": msg,
        "seq": 0,
        "method": "message/send",
        "request": b'{"jsonrpc": "2.0"}',
        "headers": {"x-a": "1"},
        "created_at": T0,
        "updated_at": T0,
    }
    fields.update(kw)
    return Delivery(**fields)


async def accept_many(store: Store, ws_id: str, n: int, **kw: Any) -> list[Delivery]:
    out = []
    for i in range(n):
        d, created = await store.accept(make_d(ws_id, f"m{i}", **kw))
        assert created
        out.append(d)
    return out


async def claim(
    store: Store, ws_id: str, *, capacity: int | None = None, owner: str = "a", now: float = T0
) -> list[Delivery]:
    return await store.claim(ws_id, capacity=capacity, owner=owner, lease_seconds=LEASE, now=now)


def ids(ds: list[Delivery]) -> list[str]:
    return [d.id for d in ds]


# The rules of which delivery may be canceled or retried live in the domain and the
# DeliveryLog, not in the adapters: these run through the log over each store.
def log_at(store: Store, now: float) -> DeliveryLog:
    bus = MemoryBus()
    return DeliveryLog(
        store, bus, Events(bus, "t"), Metrics(), replica="a", sole=True, clock=lambda: now
    )


async def cancel(store: Store, delivery_id: str, now: float, reason: str) -> Delivery:
    return await log_at(store, now).cancel(delivery_id, reason)


async def retry(store: Store, delivery_id: str, now: float) -> Delivery:
    return await log_at(store, now).retry(delivery_id)


async def cancel_pending(store: Store, ws_id: str, now: float, reason: str) -> list[Delivery]:
    return await log_at(store, now).cancel_pending(ws_id, reason)


async def counts(store: Store, *ws_ids: str) -> dict[DeliveryStatus, int]:
    out = {s: 0 for s in DeliveryStatus}
    for ws_id in ws_ids:
        for d in await store.list_deliveries(ws_id, limit=100_000):
            out[d.status] += 1
    return out


async def next_ready_at(store: Store, ws_id: str) -> float | None:
    queued = await store.list_deliveries(ws_id, DeliveryStatus.QUEUED, limit=100_000)
    return min((d.not_before for d in queued), default=None)


# workspaces -----------------------------------------------------------------
async def test_create_and_get_by_id_and_name(store: Store) -> None:
    ws = make_ws(
        "alpha",
        env={"K": "v"},
        limits={"memory": "1g"},
        agent_card={"name": "a"},
        capabilities={"native_session": True},
        restart_policy=RestartPolicy.ALWAYS,
        max_concurrency=3,
        drain_seconds=2.5,
        pid=42,
        last_heartbeat=T0 + 1,
    )
    await store.create_workspace(ws)
    assert await store.get_workspace(ws.id) == ws
    assert await store.get_workspace("alpha") == ws


async def test_get_missing_workspace_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFound) as e:
        await store.get_workspace("nope")
    assert e.value.code == "workspace_not_found"


async def test_create_duplicate_name_or_id_conflicts(store: Store) -> None:
    ws = make_ws("alpha")
    await store.create_workspace(ws)
    with pytest.raises(Conflict) as e:
        await store.create_workspace(make_ws("alpha"))
    assert e.value.code == "name_taken"
    with pytest.raises(Conflict):
        await store.create_workspace(make_ws("beta", id=ws.id))
    assert [w.name for w in await store.list_workspaces()] == ["alpha"]


async def test_stored_workspace_is_a_copy(store: Store) -> None:
    """Mutating what the caller holds must never change the stored record."""
    ws = make_ws("alpha", env={"K": "v"})
    await store.create_workspace(ws)
    ws.env["K"] = "changed"
    got = await store.get_workspace(ws.id)
    got.env["K"] = "changed again"
    assert (await store.get_workspace(ws.id)).env == {"K": "v"}
    (listed,) = await store.list_workspaces()
    listed.env["K"] = "changed in a list"
    assert [w.env for w in await store.list_workspaces()] == [{"K": "v"}]


async def test_list_workspaces_by_creation_time(store: Store) -> None:
    await store.create_workspace(make_ws("late", created_at=T0 + 2))
    await store.create_workspace(make_ws("early", created_at=T0))
    await store.create_workspace(make_ws("mid", created_at=T0 + 1))
    assert [w.name for w in await store.list_workspaces()] == ["early", "mid", "late"]


async def test_changed_workspaces_reads_only_rows_written_since_seen(store: Store) -> None:
    """Row versions (PostgreSQL: a replica's refresh reads only what changed); a store that
    keeps none says so (None), and its replicas list everything."""
    a, b = make_ws("alpha"), make_ws("beta")
    await store.create_workspace(a)
    await store.create_workspace(b)
    got = await store.changed_workspaces({})
    if got is None:
        from berth.adapters.sql.postgres import PostgresStore

        assert not isinstance(store, PostgresStore)
        return
    versions, changed = got
    assert set(versions) == {a.id, b.id}
    assert sorted((w.name, v) for w, v in changed) == sorted(
        [("alpha", versions[a.id]), ("beta", versions[b.id])]
    )
    assert await store.changed_workspaces(versions) == (versions, [])  # reads change nothing
    await store.get_workspace(a.id)
    assert await store.changed_workspaces(versions) == (versions, [])
    await store.update_workspace(b.id, agent_url="http://x")
    again, changed = await store.changed_workspaces(versions)
    assert again[a.id] == versions[a.id] and again[b.id] != versions[b.id]
    assert [(w.id, w.agent_url, v) for w, v in changed] == [(b.id, "http://x", again[b.id])]
    before = again
    await store.move_workspace(a.id, S.PROVISIONING)
    again, changed = await store.changed_workspaces(before)
    assert [w.id for w, _ in changed] == [a.id] and again[a.id] != before[a.id]
    # beats are kept apart from the record: a flush of them makes no other replica read it
    await store.record_heartbeats({a.id: T0 + 9, b.id: T0 + 9})
    assert await store.changed_workspaces(again) == (again, [])
    await store.delete_workspace(b.id)
    gone, changed = await store.changed_workspaces(again)
    assert set(gone) == {a.id} and changed == []


async def test_update_workspace(store: Store) -> None:
    ws = make_ws("alpha")
    await store.create_workspace(ws)
    got = await store.update_workspace(
        ws.id, agent_url="http://x", capabilities={"a": 1}, active_tasks=2
    )
    assert (got.agent_url, got.capabilities, got.state, got.active_tasks) == (
        "http://x",
        {"a": 1},
        ws.state,
        2,
    )
    assert got.updated_at > T0  # stamped by the store
    assert await store.get_workspace(ws.id) == got
    got = await store.update_workspace(ws.id, agent_card=None, updated_at=T0 + 5)
    assert got.agent_card is None and got.updated_at == T0 + 5


async def test_update_workspace_errors(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.update_workspace("nope", agent_url="http://x")
    ws = make_ws("alpha")
    await store.create_workspace(ws)
    with pytest.raises(AttributeError):
        await store.update_workspace(ws.id, no_such_field=1)
    with pytest.raises(AttributeError):
        await store.update_workspace(ws.id, id="other")
    with pytest.raises(AttributeError):  # a state changes by move_workspace only
        await store.update_workspace(ws.id, state=S.ONLINE)
    assert await store.get_workspace(ws.id) == ws


async def test_every_move_of_the_state_table(store: Store) -> None:
    """Each (from, to) pair: the store moves exactly when the domain's table allows it,
    raises IllegalTransition otherwise, and then leaves the workspace as it was."""
    for src in S:
        for dst in S:
            ws = make_ws(f"w-{src.value}-{dst.value}", state=src)
            await store.create_workspace(ws)
            if can_move(src, dst):
                moved = await store.move_workspace(ws.id, dst, last_error="x")
                assert moved is not None and moved.state is dst, (src, dst)
                assert moved.last_error == "x"
            else:
                with pytest.raises(IllegalTransition):
                    await store.move_workspace(ws.id, dst, last_error="x")
                again = await store.get_workspace(ws.id)
                assert (again.state, again.last_error) == (src, None), (src, dst)
                # a condition the workspace does not meet is a lost race: None, no error
                others = frozenset(S) - {src}
                assert await store.move_workspace(ws.id, dst, only_from=others) is None


async def test_move_workspace_only_from(store: Store) -> None:
    ws = make_ws("alpha", state=S.PROVISIONING)
    await store.create_workspace(ws)
    assert await store.move_workspace(ws.id, S.ONLINE, only_from=frozenset({S.OFFLINE})) is None
    assert (await store.get_workspace(ws.id)).state is S.PROVISIONING
    assert await store.move_workspace(ws.id, S.ONLINE, only_from=frozenset()) is None
    moved = await store.move_workspace(
        ws.id, S.ONLINE, only_from=frozenset({S.PROVISIONING}), agent_url="http://x"
    )
    assert moved is not None and moved.state is S.ONLINE and moved.agent_url == "http://x"
    moved = await store.move_workspace(ws.id, S.DRAINING)
    assert moved is not None and moved.state is S.DRAINING
    assert (await store.get_workspace(ws.id)).state is S.DRAINING
    assert await store.move_workspace("nope", S.ONLINE) is None


async def test_delete_workspace(store: Store) -> None:
    ws = make_ws("alpha")
    await store.create_workspace(ws)
    await store.delete_workspace(ws.id)
    await store.delete_workspace(ws.id)  # idempotent
    with pytest.raises(NotFound):
        await store.get_workspace(ws.id)
    assert await store.list_workspaces() == []
    await store.create_workspace(make_ws("alpha"))  # the name is free again


# accept and read ------------------------------------------------------------
async def test_accept_is_idempotent_by_message_id(store: Store) -> None:
    first, created = await store.accept(make_d("w1", "m1", request=b"one"))
    assert created and first.status is D.QUEUED and first.seq > 0
    again, created = await store.accept(make_d("w1", "m1", request=b"two"))
    assert not created and again == first and again.request == b"one"
    other, created = await store.accept(make_d("w2", "m1"))  # same message, other workspace
    assert created and other.seq > first.seq
    assert await store.get_delivery(first.id) == first
    assert await store.find_delivery("w1", "m1") == first
    assert await store.find_delivery("w1", "m2") is None


async def test_accept_keeps_every_field(store: Store) -> None:
    d = make_d(
        "w1",
        "m1",
        request=b"\x00\xffbinary",
        headers={"a": "b"},
        not_before=T0 + 3,
        expires_at=T0 + 60,
    )
    got, _ = await store.accept(d)
    d.seq = got.seq
    assert got == d
    d.headers["a"] = "mutated"
    assert (await store.get_delivery(d.id)).headers == {"a": "b"}


async def test_sequence_is_increasing(store: Store) -> None:
    ds = await accept_many(store, "w1", 5)
    seqs = [d.seq for d in ds]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5


async def test_get_missing_delivery(store: Store) -> None:
    with pytest.raises(NotFound) as e:
        await store.get_delivery("nope")
    assert e.value.code == "delivery_not_found"


# claim ----------------------------------------------------------------------
async def test_claim_fifo_and_lease(store: Store) -> None:
    ds = await accept_many(store, "w1", 3)
    await accept_many(store, "w2", 2)
    got = await claim(store, "w1", owner="a", now=T0 + 1)
    assert ids(got) == ids(ds)
    for d in got:
        assert d.status is D.IN_FLIGHT and d.lease_owner == "a"
        assert d.lease_until == T0 + 1 + LEASE
        assert d.forwards == 1 and d.first_forwarded_at == T0 + 1 and d.updated_at == T0 + 1
    assert await store.get_delivery(ds[0].id) == got[0]
    assert await claim(store, "w1", owner="b") == []
    assert (await counts(store, "w2"))[D.QUEUED] == 2


async def test_claim_capacity_counts_in_flight(store: Store) -> None:
    ds = await accept_many(store, "w1", 5)
    assert ids(await claim(store, "w1", capacity=2)) == ids(ds[:2])
    assert await claim(store, "w1", capacity=2, owner="b") == []
    assert ids(await claim(store, "w1", capacity=3, owner="b")) == ids(ds[2:3])
    await store.settle(ds[0].id, "a", Settle(D.DONE), T0)
    assert ids(await claim(store, "w1", capacity=3, owner="c")) == ids(ds[3:4])
    assert await claim(store, "w1", capacity=0) == []
    assert ids(await claim(store, "w1", capacity=None)) == ids(ds[4:])


async def test_claim_respects_not_before(store: Store) -> None:
    later = (await store.accept(make_d("w1", "m0", not_before=T0 + 10)))[0]
    now_ = (await store.accept(make_d("w1", "m1", not_before=T0)))[0]
    assert ids(await claim(store, "w1", now=T0)) == [now_.id]  # m0 waits; m1 may pass it
    assert await claim(store, "w1", now=T0 + 9.9) == []
    got = await claim(store, "w1", now=T0 + 10)
    assert ids(got) == [later.id] and got[0].first_forwarded_at == T0 + 10


async def test_claim_skips_deliveries_leased_by_others(store: Store) -> None:
    ds = await accept_many(store, "w1", 2)
    assert ids(await claim(store, "w1", capacity=None, owner="a")) == ids(ds)
    await store.accept(make_d("w1", "m9"))
    got = await claim(store, "w1", capacity=None, owner="b")
    assert [d.message_id for d in got] == ["m9"] and got[0].lease_owner == "b"
    assert {d.lease_owner for d in await store.list_deliveries("w1")} == {"a", "b"}


async def test_reclaim_counts_forwards_and_keeps_first_forward(store: Store) -> None:
    (d,) = await accept_many(store, "w1", 1)
    await claim(store, "w1", now=T0 + 1)
    await store.settle(d.id, "a", Settle(D.QUEUED), T0 + 2)
    (again,) = await claim(store, "w1", owner="b", now=T0 + 3)
    assert again.forwards == 2 and again.first_forwarded_at == T0 + 1 and again.lease_owner == "b"


# renew and settle -----------------------------------------------------------
async def test_renew_only_for_owner(store: Store) -> None:
    ds = await accept_many(store, "w1", 3)
    await claim(store, "w1", capacity=2, owner="a")
    assert await store.renew("b", ids(ds), T0 + 100) == 0
    assert await store.renew("a", [], T0 + 100) == 0
    assert await store.renew("a", [*ids(ds), ds[0].id, "nope"], T0 + 100) == 2
    assert [d.lease_until for d in await store.list_deliveries("w1")] == [T0 + 100, T0 + 100, None]


async def test_settle_done(store: Store) -> None:
    (d,) = await accept_many(store, "w1", 1)
    await claim(store, "w1")
    how = Settle(D.DONE, reply=b'{"result": 1}', reply_status=200, reason="ok")
    got = await store.settle(d.id, "a", how, T0 + 5)
    assert got is not None
    assert (got.status, got.reply, got.reply_status, got.reason) == (
        D.DONE,
        b'{"result": 1}',
        200,
        "ok",
    )
    assert (got.lease_owner, got.lease_until, got.finished_at, got.updated_at) == (
        None,
        None,
        T0 + 5,
        T0 + 5,
    )
    assert got.attempts == 0
    assert await store.get_delivery(d.id) == got
    assert await store.settle(d.id, "a", how, T0 + 6) is None  # not in flight any more


async def test_settle_requeue_with_backoff(store: Store) -> None:
    (d,) = await accept_many(store, "w1", 1)
    await claim(store, "w1")
    got = await store.settle(
        d.id,
        "a",
        Settle(D.QUEUED, count_attempt=True, reason="transport", not_before=T0 + 7),
        T0 + 1,
    )
    assert got is not None
    assert (got.status, got.attempts, got.reason, got.not_before) == (
        D.QUEUED,
        1,
        "transport",
        T0 + 7,
    )
    assert got.finished_at is None and got.lease_owner is None and got.reply is None
    assert await claim(store, "w1", now=T0 + 6) == []
    assert await next_ready_at(store, "w1") == T0 + 7


async def test_settle_dead_and_canceled_keep_earlier_reply(store: Store) -> None:
    a, b = await accept_many(store, "w1", 2)
    await claim(store, "w1")
    dead = await store.settle(
        a.id, "a", Settle(D.DEAD, count_attempt=True, reason="poison"), T0 + 1
    )
    assert (
        dead is not None
        and dead.status is D.DEAD
        and dead.attempts == 1
        and dead.finished_at == T0 + 1
    )
    gone = await store.settle(b.id, "a", Settle(D.CANCELED, reason="stop"), T0 + 2)
    assert gone is not None and gone.status is D.CANCELED and gone.reply is None


async def test_settle_by_wrong_owner_or_missing(store: Store) -> None:
    (d,) = await accept_many(store, "w1", 1)
    assert await store.settle(d.id, "a", Settle(D.DONE), T0) is None  # still queued
    await claim(store, "w1", owner="a")
    assert await store.settle(d.id, "b", Settle(D.DONE), T0) is None
    assert await store.settle("nope", "a", Settle(D.DONE), T0) is None
    assert (await store.get_delivery(d.id)).status is D.IN_FLIGHT


async def test_settle_of_an_earlier_attempt_does_not_end_a_later_one(store: Store) -> None:
    """A forward that outlived its lease (a restart requeued it and this same replica claimed
    it again) settles nothing: the attempt it names is over. Two at once (one flush on
    PostgreSQL: its batched statement) and one alone."""
    a, b = await accept_many(store, "w1", 2)
    first = await claim(store, "w1", owner="r")
    assert {d.forwards for d in first} == {1}
    await store.requeue_in_flight("w1")
    again = await claim(store, "w1", owner="r", now=T0 + 1)
    assert {d.forwards for d in again} == {2}
    write_many = getattr(store, "_write_many", None)
    if write_many is not None:  # PostgreSQL: a flush of several is one batched statement
        from berth.adapters.sql.postgres_batch import SettleCall

        calls = [SettleCall(i, "r", Settle(D.DONE, forward=1), T0 + 2) for i in (a.id, b.id)]
        assert await write_many(calls) == [None, None]
    stale = await asyncio.gather(
        store.settle(a.id, "r", Settle(D.QUEUED, forward=1), T0 + 2),
        store.settle(b.id, "r", Settle(D.QUEUED, forward=1), T0 + 2),
    )
    assert stale == [None, None]
    assert {d.status for d in await store.list_deliveries("w1")} == {D.IN_FLIGHT}
    done = await asyncio.gather(
        store.settle(a.id, "r", Settle(D.DONE, reply=b"{}", forward=2), T0 + 3),
        store.settle(b.id, "r", Settle(D.DONE, reply=b"{}", forward=2), T0 + 3),
    )
    assert [d.status if d else None for d in done] == [D.DONE, D.DONE]
    (c,) = await accept_many(store, "w2", 1)
    await claim(store, "w2", owner="r")
    assert await store.settle(c.id, "r", Settle(D.DONE, forward=7), T0) is None
    assert (await store.settle(c.id, "r", Settle(D.DONE, forward=1), T0)) is not None


async def test_settle_illegal_status(store: Store) -> None:
    (d,) = await accept_many(store, "w1", 1)
    await claim(store, "w1")
    with pytest.raises(IllegalTransition):
        await log_at(store, T0).settle(d, Settle(D.EXPIRED))
    with pytest.raises(IllegalTransition):  # checked before the lookup
        await log_at(store, T0).settle(make_d("w1", "nope", id="nope"), Settle(D.EXPIRED))
    assert (await store.get_delivery(d.id)).status is D.IN_FLIGHT


# requeue --------------------------------------------------------------------
async def test_requeue_in_flight(store: Store) -> None:
    a = await accept_many(store, "w1", 2)
    b = (await store.accept(make_d("w2", "x")))[0]
    await claim(store, "w1")
    await claim(store, "w2")
    assert set(await store.requeue_in_flight("w1")) == set(ids(a))
    for d in await store.list_deliveries("w1"):
        assert (d.status, d.lease_owner, d.lease_until, d.forwards) == (D.QUEUED, None, None, 1)
    assert (await store.get_delivery(b.id)).status is D.IN_FLIGHT
    await claim(store, "w1")
    assert set(await store.requeue_in_flight()) == {*ids(a), b.id}
    assert await store.requeue_in_flight() == []


async def test_requeue_expired_takes_over_any_owner(store: Store) -> None:
    a = (await store.accept(make_d("w1", "a")))[0]
    b = (await store.accept(make_d("w2", "b")))[0]
    c = (await store.accept(make_d("w3", "c")))[0]
    await claim(store, "w1", owner="r1", now=T0)  # lease until T0 + 30
    await claim(store, "w2", owner="r2", now=T0 + 5)  # lease until T0 + 35
    await claim(store, "w3", owner="r3", now=T0 + 20)  # lease until T0 + 50
    assert await store.requeue_expired(T0 + LEASE) == []  # not yet: strictly before now
    got = await store.requeue_expired(T0 + 40)
    assert sorted(ids(got)) == sorted([a.id, b.id])
    for d in got:
        assert (d.status, d.lease_owner, d.lease_until) == (D.QUEUED, None, None)
        assert d.reason == "lease expired: redelivered"
    assert (await store.get_delivery(c.id)).lease_owner == "r3"
    assert await store.settle(a.id, "r1", Settle(D.DONE), T0 + 41) is None  # the old owner lost it
    assert ids(await claim(store, "w1", owner="r9", now=T0 + 41)) == [a.id]


async def test_release_leases_gives_back_one_owners_in_flight_work(store: Store) -> None:
    """A stopping replica gives its leases back: its in-flight deliveries are queued again
    at once (attempts unchanged), another replica's stay its own."""
    a1, a2 = await accept_many(store, "w1", 2)
    b = (await store.accept(make_d("w2", "b")))[0]
    q = (await store.accept(make_d("w3", "queued")))[0]
    await claim(store, "w1", owner="stopping", now=T0)
    await claim(store, "w2", owner="staying", now=T0)
    got = await store.release_leases("stopping")
    assert ids(got) == [a1.id, a2.id]  # in the log's order
    for d in got:
        assert (d.status, d.lease_owner, d.lease_until) == (D.QUEUED, None, None)
        assert d.attempts == 0 and d.reason == "released by a stopping replica: redelivered"
    assert (await store.get_delivery(b.id)).lease_owner == "staying"
    assert (await store.get_delivery(q.id)).status is D.QUEUED
    assert await store.release_leases("stopping") == []
    assert await store.settle(a1.id, "stopping", Settle(D.DONE), T0 + 1) is None  # given up
    assert ids(await claim(store, "w1", owner="staying", now=T0 + 1)) == [a1.id, a2.id]


async def test_renew_keeps_a_lease_from_expiring(store: Store) -> None:
    (d,) = await accept_many(store, "w1", 1)
    await claim(store, "w1", owner="a", now=T0)
    assert await store.renew("a", [d.id], T0 + 100) == 1
    assert await store.requeue_expired(T0 + 50) == []


# cancel, retry, expire -------------------------------------------------------
async def test_cancel_only_queued(store: Store) -> None:
    a, b = await accept_many(store, "w1", 2)
    got = await cancel(store, a.id, T0 + 1, "by user")
    assert (got.status, got.reason, got.finished_at, got.updated_at) == (
        D.CANCELED,
        "by user",
        T0 + 1,
        T0 + 1,
    )
    with pytest.raises(Conflict) as e:
        await cancel(store, a.id, T0 + 2, "again")
    assert e.value.code == "not_cancelable"
    await claim(store, "w1")
    with pytest.raises(Conflict):
        await cancel(store, b.id, T0 + 2, "in flight")
    with pytest.raises(NotFound):
        await cancel(store, "nope", T0, "x")


async def test_cancel_pending(store: Store) -> None:
    ds = await accept_many(store, "w1", 3)
    other = (await store.accept(make_d("w2", "x")))[0]
    await claim(store, "w1", capacity=1)
    await store.settle(ds[0].id, "a", Settle(D.DONE), T0)
    await claim(store, "w1", capacity=1)  # ds[1] in flight, ds[2] queued
    got = await cancel_pending(store, "w1", T0 + 3, "removed")
    assert ids(got) == ids(ds[1:])
    for d in got:
        assert (d.status, d.reason, d.finished_at, d.lease_owner, d.lease_until) == (
            D.CANCELED,
            "removed",
            T0 + 3,
            None,
            None,
        )
    assert (await store.get_delivery(ds[0].id)).status is D.DONE
    assert (await store.get_delivery(other.id)).status is D.QUEUED
    assert await cancel_pending(store, "w1", T0 + 4, "again") == []


async def test_retry_goes_to_the_back_of_the_queue(store: Store) -> None:
    a, b = await accept_many(store, "w1", 2)
    await claim(store, "w1", capacity=1)
    await store.settle(
        a.id,
        "a",
        Settle(D.DEAD, count_attempt=True, reason="poison", reply=b"{}", reply_status=500),
        T0 + 1,
    )
    got = await retry(store, a.id, T0 + 2)
    assert got.id == a.id and got.seq > b.seq
    assert (
        got.status,
        got.attempts,
        got.reason,
        got.finished_at,
        got.not_before,
        got.updated_at,
    ) == (D.QUEUED, 0, "retried by an operator", None, 0.0, T0 + 2)
    assert got.forwards == 1 and got.message_id == a.message_id
    assert await store.get_delivery(a.id) == got
    assert await store.find_delivery("w1", a.message_id) == got
    assert ids(await claim(store, "w1", now=T0 + 3)) == [b.id, a.id]


async def test_retry_rules(store: Store) -> None:
    a, b = await accept_many(store, "w1", 2, expires_at=T0 + 1)
    c = (await store.accept(make_d("w1", "c")))[0]
    with pytest.raises(Conflict) as e:
        await retry(store, a.id, T0)
    assert e.value.code == "not_retryable"
    with pytest.raises(NotFound):
        await retry(store, "nope", T0)
    await cancel(store, a.id, T0, "x")
    await store.expire_due(T0 + 1)
    assert (await retry(store, a.id, T0 + 2)).status is D.QUEUED  # canceled
    assert (await retry(store, b.id, T0 + 2)).status is D.QUEUED  # expired
    await claim(store, "w1", now=T0 + 3)
    assert await store.settle(c.id, "a", Settle(D.DONE), T0 + 4) is not None
    with pytest.raises(Conflict):
        await retry(store, c.id, T0 + 5)  # done is done


async def test_expire_due(store: Store) -> None:
    soon = (await store.accept(make_d("w1", "soon", expires_at=T0 + 5)))[0]
    late = (await store.accept(make_d("w1", "late", expires_at=T0 + 50)))[0]
    never = (await store.accept(make_d("w1", "never")))[0]
    busy = (await store.accept(make_d("w2", "busy", expires_at=T0 + 5)))[0]
    await claim(store, "w2")
    assert await store.expire_due(T0 + 4.9) == []
    got = await store.expire_due(T0 + 5)
    assert ids(got) == [soon.id]
    assert (got[0].status, got[0].reason, got[0].finished_at) == (D.EXPIRED, "ttl passed", T0 + 5)
    for d in (late, never):
        assert (await store.get_delivery(d.id)).status is D.QUEUED
    assert (await store.get_delivery(busy.id)).status is D.IN_FLIGHT  # only queued ones expire


# listing --------------------------------------------------------------------
async def test_list_deliveries(store: Store) -> None:
    ds = await accept_many(store, "w1", 5)
    await store.accept(make_d("w2", "x"))
    await cancel(store, ds[1].id, T0, "x")
    assert ids(await store.list_deliveries("w1")) == ids(ds)
    assert ids(await store.list_deliveries("w1", limit=2)) == ids(
        ds[3:]
    )  # the newest, oldest first
    assert ids(await store.list_deliveries("w1", D.QUEUED)) == ids([ds[0], *ds[2:]])
    assert ids(await store.list_deliveries("w1", D.CANCELED)) == [ds[1].id]
    assert await store.list_deliveries("w1", D.DONE) == []
    assert await store.list_deliveries("nope") == []


async def test_counts(store: Store) -> None:
    ds = await accept_many(store, "w1", 4)
    await store.accept(make_d("w2", "x"))
    await claim(store, "w1", capacity=2)
    await store.settle(ds[0].id, "a", Settle(D.DONE), T0)
    await cancel(store, ds[3].id, T0, "x")
    zero = {s: 0 for s in D}
    assert await counts(store, "w1") == {
        **zero,
        D.QUEUED: 1,
        D.IN_FLIGHT: 1,
        D.DONE: 1,
        D.CANCELED: 1,
    }
    assert await counts(store, "w1", "w2") == {
        **zero,
        D.QUEUED: 2,
        D.IN_FLIGHT: 1,
        D.DONE: 1,
        D.CANCELED: 1,
    }
    assert await counts(store, "nope") == zero
    assert await store.pending("w1") == (1, 1)
    assert await store.pending("w2") == (1, 0)
    assert await store.pending("nope") == (0, 0)


async def test_next_ready_at(store: Store) -> None:
    assert await next_ready_at(store, "w1") is None
    await store.accept(make_d("w1", "a", not_before=T0 + 9))
    b = (await store.accept(make_d("w1", "b", not_before=T0 + 4)))[0]
    assert await next_ready_at(store, "w1") == T0 + 4
    await cancel(store, b.id, T0, "x")
    assert await next_ready_at(store, "w1") == T0 + 9
    await store.accept(make_d("w1", "c"))
    assert await next_ready_at(store, "w1") == 0.0


async def test_prune_finished(store: Store) -> None:
    ds = await accept_many(store, "w1", 6)
    await claim(store, "w1", capacity=3, now=T0)
    await store.settle(ds[0].id, "a", Settle(D.DONE), T0 + 1)
    await store.settle(ds[1].id, "a", Settle(D.DEAD), T0 + 10)  # finished, but too recently
    await cancel(store, ds[3].id, T0 + 2, "x")  # ds[2] stays in flight, ds[4:] queued
    await retry(store, ds[3].id, T0 + 3)
    await cancel(store, ds[4].id, T0 + 2, "x")
    assert await store.prune_finished(T0 + 5) == 2
    left = {d.id: d.status for d in await store.list_deliveries("w1")}
    assert left == {ds[1].id: D.DEAD, ds[2].id: D.IN_FLIGHT, ds[3].id: D.QUEUED, ds[5].id: D.QUEUED}
    with pytest.raises(NotFound):
        await store.get_delivery(ds[0].id)
    assert await store.find_delivery("w1", ds[0].message_id) is None
    again, created = await store.accept(make_d("w1", ds[0].message_id))
    assert created and again.id != ds[0].id  # a pruned message id may come back
    assert await store.prune_finished(T0 + 5) == 0


# restarts -------------------------------------------------------------------
def make_restart(
    ws_id: str, created_at: float, phase: Phase = Phase.REQUESTED, **kw: Any
) -> RestartRecord:
    return RestartRecord(
        id=uuid.uuid4().hex,
        workspace_id=ws_id,
        trigger=Trigger.API,
        reason="why",
        drain_seconds=5.0,
        phase=phase,
        created_at=created_at,
        **kw,
    )


async def test_restart_records(store: Store) -> None:
    r = make_restart("w1", T0)
    await store.save_restart(r)
    assert await store.get_restart("w1", r.id) == r
    r.phase = Phase.DONE
    r.phases = [
        PhaseTiming(Phase.DRAINING, T0, T0 + 1, "2 finished"),
        PhaseTiming(Phase.DONE, T0 + 1),
    ]
    r.drain_report = {"finished": 2, "requeued": ["x"]}
    r.error, r.finished_at = "none", T0 + 2
    await store.save_restart(r)  # an upsert
    assert await store.get_restart("w1", r.id) == r
    with pytest.raises(NotFound) as e:
        await store.get_restart("w2", r.id)
    assert e.value.code == "restart_not_found"
    with pytest.raises(NotFound):
        await store.get_restart("w1", "nope")


async def test_list_restarts_newest_first(store: Store) -> None:
    rs = [make_restart("w1", T0 + i, Phase.DONE) for i in range(4)]
    for r in rs:
        await store.save_restart(r)
    await store.save_restart(make_restart("w2", T0))
    assert [r.id for r in await store.list_restarts("w1")] == [r.id for r in reversed(rs)]
    assert [r.id for r in await store.list_restarts("w1", limit=2)] == [rs[3].id, rs[2].id]
    assert await store.list_restarts("nope") == []


async def test_active_restart(store: Store) -> None:
    assert await store.active_restart("w1") is None
    done = make_restart("w1", T0 + 5, Phase.DONE)
    failed = make_restart("w1", T0 + 6, Phase.FAILED)
    old = make_restart("w1", T0, Phase.DRAINING)
    new = make_restart("w1", T0 + 1, Phase.STARTING)
    for r in (done, failed, old, new):
        await store.save_restart(r)
    assert await store.active_restart("w1") == new
    new.phase = Phase.DONE
    await store.save_restart(new)
    assert await store.active_restart("w1") == old
    assert await store.active_restart("w2") is None


# concurrency ----------------------------------------------------------------
async def _stores(backend: Backend, n: int) -> list[Store]:
    """n stores on one database: stand-ins for n berth replicas."""
    return [await backend.open() for _ in range(n)]


async def test_concurrent_claimers_respect_capacity_one(backend: Backend) -> None:
    stores = await _stores(backend, 4)
    ds = await accept_many(stores[0], "w1", 24)
    holding: set[str] = set()
    claimed: list[str] = []
    worst = 0

    async def worker(i: int, store: Store) -> None:
        nonlocal worst
        owner = f"r{i}"
        while True:
            got = await store.claim("w1", capacity=1, owner=owner, lease_seconds=LEASE, now=T0)
            if not got:
                if (await counts(store, "w1"))[D.QUEUED] == 0:
                    return
                await asyncio.sleep(0.001)
                continue
            assert len(got) == 1
            holding.add(got[0].id)
            worst = max(worst, len(holding))
            claimed.append(got[0].id)
            assert (await counts(store, "w1"))[D.IN_FLIGHT] == 1
            await asyncio.sleep(0)
            holding.discard(got[0].id)  # before settling: the next claim can only follow it
            assert await store.settle(got[0].id, owner, Settle(D.DONE), T0) is not None

    await asyncio.wait_for(asyncio.gather(*(worker(i, s) for i, s in enumerate(stores))), 20)
    assert worst == 1
    assert sorted(claimed) == sorted(ids(ds))
    assert (await counts(stores[0], "w1"))[D.DONE] == len(ds)


async def test_concurrent_claimers_claim_each_delivery_once(backend: Backend) -> None:
    stores = await _stores(backend, 4)
    ds = await accept_many(stores[0], "w1", 40)
    claimed: list[tuple[str, str]] = []

    async def worker(i: int, store: Store) -> None:
        owner = f"r{i}"
        while True:
            got = await store.claim("w1", capacity=None, owner=owner, lease_seconds=LEASE, now=T0)
            if not got and (await counts(store, "w1"))[D.QUEUED] == 0:
                return
            for d in got:
                claimed.append((d.id, owner))
                assert d.lease_owner == owner
                assert await store.settle(d.id, owner, Settle(D.DONE), T0) is not None
            await asyncio.sleep(0)

    async def feeder() -> None:
        """More messages arrive while the claimers run."""
        for i in range(20):
            ds.append((await stores[-1].accept(make_d("w1", f"late{i}")))[0])
            await asyncio.sleep(0)

    await asyncio.wait_for(
        asyncio.gather(feeder(), *(worker(i, s) for i, s in enumerate(stores))), 20
    )
    for i, s in enumerate(stores):  # whatever arrived after a worker gave up
        await worker(i, s)
    assert sorted(d for d, _ in claimed) == sorted(ids(ds))
    done = await stores[0].list_deliveries("w1", D.DONE, limit=1000)
    assert len(done) == len(ds) and all(d.forwards == 1 for d in done)


async def test_first_forward_at_time_zero_is_kept(store: Store) -> None:
    """A zero timestamp is a time, not "never" (the memory adapter once confused the two)."""
    (d,) = await accept_many(store, "w1", 1)
    await claim(store, "w1", now=0.0)
    await store.settle(d.id, "a", Settle(D.QUEUED), 1.0)
    (again,) = await claim(store, "w1", now=2.0)
    assert again.first_forwarded_at == 0.0


async def test_queue_head_is_the_oldest_queued_delivery(store: Store) -> None:
    assert await store.queue_head("w1") is None
    ds = [(await store.accept(make_d("w1", f"m{i}", created_at=T0 + i)))[0] for i in range(3)]
    await store.accept(make_d("w2", "other", created_at=T0 - 100))
    assert await store.queue_head("w1") == T0
    await claim(store, "w1", capacity=1)  # the head goes in flight: the next one is the head
    assert await store.queue_head("w1") == T0 + 1
    await cancel(store, ds[1].id, T0, "x")
    assert await store.queue_head("w1") == T0 + 2
    await cancel(store, ds[2].id, T0, "x")
    assert await store.queue_head("w1") is None
