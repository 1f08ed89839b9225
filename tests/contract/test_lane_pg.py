"""The fast lane's accept on PostgreSQL (adapters/sql/postgres_lane.py): one statement that
reads the credential and the workspace and writes the row in flight only when every rule
the SQLite lane checks holds, under the claim lock Python's claims take."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

import pytest

from berth.domain.credentials import Credential, Role
from berth.domain.lifecycle import WorkspaceState
from berth.domain.workspace import Runtime
from tests.contract import test_pg_group_commit as _group_commit
from tests.contract.test_store import T0, make_d, make_ws

pytestmark = pytest.mark.postgres
pg = _group_commit.pg  # the fixture: a migrated PostgresStore on a schema of its own, its URL
_conn = _group_commit._other_connection
OWNER = "replica-1:lane"
LOCK = 0x62657274  # the claim lock's first key (postgres_base._CLAIM_LOCK_CLASS)
URL = "http://127.0.0.1:8123/"


async def _online(store: Any, name: str = "w", **kw: Any) -> Any:
    fields: dict[str, Any] = {
        "runtime": Runtime.EXTERNAL,
        "command": None,
        "state": WorkspaceState.ONLINE,
        "agent_url": URL,
        "max_concurrency": 2,
    }
    fields.update(kw)
    ws = make_ws(name, **fields)
    await store.create_workspace(ws)
    return ws


async def _caller(store: Any, name: str, *, revoked: bool = False, role: Role = Role.CALLER) -> str:
    secret = f"secret-{name}-{uuid.uuid4().hex}"
    await store.add_credential(
        Credential(
            id=uuid.uuid4().hex,
            subject=f"caller:{name}",
            role=role,
            secret_hash=hashlib.sha256(secret.encode()).hexdigest(),
            created_at=T0,
            revoked_at=T0 if revoked else None,
        )
    )
    return hashlib.sha256(secret.encode()).hexdigest()


async def _accept(
    conn: Any,
    ref: str,
    *,
    cred: str | None = None,
    mid: str | None = None,
    docker: bool = False,
    max_queue: int = 10000,
    headers: str = '{"a2a-version":"1.0",',
) -> Any:
    """berth_lane_write with one accept, as the lane calls it: the row it took, or None."""
    return await conn.fetchrow(
        "SELECT * FROM berth_lane_write('{}', '{}', '{}', '{}', 0, NULL, 0, ARRAY[$1], ARRAY[$2],"
        " ARRAY[$3], ARRAY[$4], ARRAY[$5], ARRAY[$6], ARRAY[$7::bytea], ARRAY[$8],"
        " ARRAY[$9::float8], ARRAY[$10::float8], $11, $12, $13)",
        uuid.uuid4().hex, ref, cred, mid or uuid.uuid4().hex, "f" * 64, "SendMessage",
        b'{"jsonrpc":"2.0"}', headers, T0 + 30, T0, OWNER, max_queue, docker,
    )  # fmt: skip


async def test_the_operator_s_send_is_written_in_flight_with_its_headers_ended(pg):
    store, url = pg
    ws = await _online(store, max_concurrency=3)
    conn = await _conn(url)
    try:
        got = await _accept(conn, "w", mid="m-1")
        assert got is not None and got["k"] == 1
        assert (got["l_ws"], got["l_url"], got["l_cap"], got["l_caller"]) == (
            ws.id, URL, 3, "operator",
        )  # fmt: skip
        row = await conn.fetchrow("SELECT * FROM deliveries WHERE message_id = 'm-1'")
        assert row["status"] == "in_flight" and row["forwards"] == 1 and row["attempts"] == 0
        assert row["lease_owner"] == OWNER and row["lease_until"] == T0 + 30
        assert json.loads(row["headers"]) == {"a2a-version": "1.0", "x-berth-caller": "operator"}
        # by id as by name; a second send of the same messageId is not the lane's
        assert await _accept(conn, ws.id) is not None
        assert await _accept(conn, "w", mid="m-1") is None
        assert await _accept(conn, "nope") is None
        # no header of the caller's: the object is the caller alone
        await _accept(conn, "w", mid="m-2", headers="{")
        h = await conn.fetchval("SELECT headers FROM deliveries WHERE message_id = 'm-2'")
        assert json.loads(h) == {"x-berth-caller": "operator"}
    finally:
        await conn.close()


async def test_only_an_active_caller_on_the_allow_list_is_taken(pg):
    store, url = pg
    await _online(store, "w", allowed_callers=["caller:ann"])
    await _online(store, "open", allowed_callers=["*"])
    ann, bob = await _caller(store, "ann"), await _caller(store, "bob")
    gone = await _caller(store, "cid", revoked=True)
    agent = await _caller(store, "dan", role=Role.AGENT)
    conn = await _conn(url)
    try:
        got = await _accept(conn, "w", cred=ann)
        assert got is not None and got["l_caller"] == "caller:ann"
        assert await _accept(conn, "w", cred=bob) is None  # not on the list: Python's 403
        assert (await _accept(conn, "open", cred=bob))["l_caller"] == "caller:bob"
        assert await _accept(conn, "open", cred=gone) is None  # revoked: Python's 401
        assert await _accept(conn, "open", cred=agent) is None  # an agent's credential
        assert await _accept(conn, "open", cred="0" * 64) is None  # nobody's
        # a name the lane could not write as it is into JSON and a header: Python's
        for odd in ('a"b', "a\\b", "a\tb", "é"):
            assert await _accept(conn, "open", cred=await _caller(store, odd)) is None, odd
        n = await conn.fetchval("SELECT count(*) FROM deliveries")
        assert n == 2
    finally:
        await conn.close()


async def test_a_workspace_the_lane_may_not_serve_is_left_to_python(pg):
    store, url = pg
    await _online(store, "off", state=WorkspaceState.OFFLINE)
    await _online(store, "far", agent_url="http://10.0.0.1:8000/")
    await _online(store, "nameonly", agent_url="http://agent.example:8000/")
    await _online(store, "noport", agent_url="http://127.0.0.1/")
    await _online(store, "closed", limits={"max_queue": 0})
    await _online(store, "box", runtime=Runtime.DOCKER, image="x")
    conn = await _conn(url)
    try:
        for ref in ("off", "far", "nameonly", "noport", "closed"):
            assert await _accept(conn, ref) is None, ref
        assert await _accept(conn, "closed", max_queue=0) is None
        # a Docker workspace is the lane's unless berth runs in a container of its engine
        assert await _accept(conn, "box") is not None
        assert await _accept(conn, "box", docker=True) is None
        # a queue limit of berth's own of 0 closes every workspace without one of its own
        await _online(store, "open2")
        assert await _accept(conn, "open2", max_queue=0) is None
        await conn.execute("UPDATE workspaces SET peer = '{}' WHERE name = 'open2'")
        assert await _accept(conn, "open2") is None  # a deploy's peer: Python's
    finally:
        await conn.close()


async def test_the_guard_nothing_queued_a_free_slot(pg):
    store, url = pg
    ws = await _online(store, "w", max_concurrency=1)
    ns = await _online(store, "ns", max_concurrency=1, capabilities={"native_session": True})
    q = await _online(store, "q")
    await store.accept(make_d(q.id, "waiting"))  # queued
    conn = await _conn(url)
    try:
        assert await _accept(conn, "q") is None  # behind a queue: Python queues it
        first = await _accept(conn, "w")
        assert first is not None and first["l_cap"] == 1
        assert await _accept(conn, "w") is None  # no free slot
        # native sessions: no count (Python's claim counts none either)
        a, b = await _accept(conn, "ns"), await _accept(conn, "ns")
        assert a is not None and b is not None and a["l_cap"] is None
        assert (
            await conn.fetchval("SELECT count(*) FROM deliveries WHERE workspace_id = $1", ns.id)
            == 2
        )
        assert ws.id == first["l_ws"]
    finally:
        await conn.close()


async def test_two_lanes_accepting_at_once_share_one_slot(pg):
    """Two flushes (two lanes, or a lane's two writers) for a workspace with one free slot:
    the claim lock makes the second count the first's row, so only one is taken."""
    store, url = pg
    await _online(store, "w", max_concurrency=1)
    a, b = await _conn(url), await _conn(url)
    try:
        ta = a.transaction()
        await ta.start()
        assert await _accept(a, "w") is not None
        tb = b.transaction()
        await tb.start()
        later = asyncio.create_task(_accept(b, "w"))
        await asyncio.sleep(0.3)
        assert not later.done()  # waits for the first flush's lock
        await ta.commit()
        assert await later is None  # and then counts its row
        await tb.commit()
        assert await a.fetchval("SELECT count(*) FROM deliveries") == 1
    finally:
        await a.close()
        await b.close()


async def test_a_python_claim_waits_for_the_lane_s_flush_and_counts_its_row(pg):
    store, url = pg
    ws = await _online(store, "w", max_concurrency=1)
    queued = make_d(ws.id, "q-1")
    lane = await _conn(url)
    try:
        t = lane.transaction()
        await t.start()
        assert await _accept(lane, ws.id) is not None
        await store.accept(queued)  # Python queued one meanwhile (its accept takes no lock)
        claim = asyncio.create_task(
            store.claim(ws.id, capacity=1, owner="py", lease_seconds=30, now=T0)
        )
        await asyncio.sleep(0.3)
        assert not claim.done()
        await t.commit()
        assert await claim == []  # the lane's row holds the one slot
    finally:
        await lane.close()


async def _settle(conn: Any, ids: list[str], renew: list[str] | None = None) -> Any:
    return await conn.fetch(
        "SELECT * FROM berth_lane_write($1::text[], $2::bytea[], $3::integer[], $4::text[], $5,"
        " $6, $7, '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', $8, 10000, false)",
        ids, [b"reply-" + i.encode() for i in ids], [200] * len(ids),
        ["application/json"] * len(ids), T0 + 1, None if renew is None else json.dumps(renew),
        T0 + 99, OWNER,
    )  # fmt: skip


async def test_a_settle_takes_only_the_lane_s_own_forward_and_a_renewal_only_its_leases(pg):
    store, url = pg
    ws = await _online(store, "w", max_concurrency=8)
    conn = await _conn(url)
    try:
        mine = [await _accept(conn, "w", mid=f"m-{i}") for i in range(3)]
        ids = [
            await conn.fetchval("SELECT id FROM deliveries WHERE message_id = $1", f"m-{i}")
            for i in range(3)
        ]
        assert all(m is not None for m in mine)
        # the third was taken over by Python meanwhile (a hand-off): not the lane's to settle
        await conn.execute("UPDATE deliveries SET lease_owner = 'py' WHERE id = $1", ids[2])
        queued = make_d(ws.id, "q-1")
        await store.accept(queued)  # not in flight
        got = await _settle(conn, [ids[0], "nope", ids[2], queued.id, ids[1]])
        assert sorted(r["k"] for r in got) == [-5, -1]  # the 1st and the 5th
        rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM deliveries")}
        for i in (ids[0], ids[1]):
            r = rows[i]
            assert (r["status"], r["lease_owner"], r["reply"]) == (
                "done",
                None,
                b"reply-" + i.encode(),
            )
            assert (r["reply_status"], r["reply_type"], r["finished_at"]) == (
                200,
                "application/json",
                T0 + 1,
            )
        assert rows[ids[2]]["status"] == "in_flight" and rows[queued.id]["status"] == "queued"
        # a settle already made is not made again
        assert await _settle(conn, [ids[0]]) == []
        # the renewal moves the lane's own in-flight leases alone
        await conn.execute("DELETE FROM deliveries WHERE id = $1", queued.id)
        assert await _accept(conn, "w", mid="m-9") is not None
        nine = await conn.fetchval("SELECT id FROM deliveries WHERE message_id = 'm-9'")
        await _settle(conn, [], renew=[nine, ids[2], ids[0]])
        rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM deliveries")}
        assert rows[nine]["lease_until"] == T0 + 99
        assert rows[ids[2]]["lease_until"] == T0 + 30  # Python's now
        assert rows[ids[0]]["lease_until"] is None  # done
    finally:
        await conn.close()


async def _flush(conn: Any, refs: list[str], settles: list[str] | None = None) -> list[Any]:
    """One flush as the lane writes it: `settles` (delivery ids), then an operator's accept
    to each of `refs` in turn (fresh messageIds); the rows it returned."""
    s = settles or []
    n = len(refs)
    return list(
        await conn.fetch(
            "SELECT * FROM berth_lane_write($1::text[], $2::bytea[], $3::integer[], $4::text[], $5,"
            " NULL, 0, $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],"
            " $12::bytea[], $13::text[], $14::float8[], $15::float8[], $16, 10000, false)",
            s,
            [b"r"] * len(s),
            [200] * len(s),
            ["application/json"] * len(s),
            T0 + 1,
            [uuid.uuid4().hex for _ in refs],
            refs,
            [None] * n,
            [uuid.uuid4().hex for _ in refs],
            ["f" * 64] * n,
            ["SendMessage"] * n,
            [b"{}"] * n,
            ["{"] * n,
            [T0 + 30] * n,
            [T0] * n,
            OWNER,
        )  # fmt: skip
    )


async def test_a_flush_takes_the_first_accepts_of_each_workspace_that_fit(pg):
    """Several accepts in one flush: per workspace, the first ones up to its free slots
    (counting what is in flight already and what the flush's own settles freed)."""
    store, url = pg
    a = await _online(store, "a", max_concurrency=2)
    await _online(store, "b", max_concurrency=1)
    await _online(store, "open", max_concurrency=1, capabilities={"native_session": True})
    conn = await _conn(url)
    try:
        got = await _flush(conn, ["a", "b", "a", "b", "a", "open", "open", "nope"])
        assert sorted(r["k"] for r in got) == [1, 2, 3, 6, 7]  # a: 2 of 3, b: 1 of 2, open: all
        busy = await conn.fetch(
            "SELECT id FROM deliveries WHERE workspace_id = $1 ORDER BY seq", a.id
        )
        assert len(busy) == 2
        # a full workspace: nothing, unless the same flush settles one of its forwards first
        assert await _flush(conn, ["a"]) == []
        got = await _flush(conn, ["a", "a"], settles=[busy[0]["id"]])
        assert sorted(r["k"] for r in got) == [-1, 1]  # the settle, then one accept fits
    finally:
        await conn.close()


async def test_the_name_or_id_means_the_workspace_python_means(pg):
    """An id before a name, as get_workspace picks, before any rule: a send to a
    workspace's id is never written to another workspace named like that id."""
    store, url = pg
    a = await _online(store, "a", state=WorkspaceState.OFFLINE)
    await _online(store, a.id)  # online, and named as the other's id
    conn = await _conn(url)
    try:
        assert (await store.get_workspace(a.id)).id == a.id
        assert await _accept(conn, a.id) is None  # a is offline: Python's (it queues it)
        await conn.execute("UPDATE workspaces SET state = 'online' WHERE id = $1", a.id)
        got = await _accept(conn, a.id)
        assert got is not None and got["l_ws"] == a.id
    finally:
        await conn.close()


async def test_a_move_out_of_online_and_a_flush_wait_for_each_other(pg):
    """berth's moves of a workspace's state (and of its peer) take its claim lock, which
    the lane's flush holds from before it reads the workspace to its commit: a move to
    draining waits for that flush, so a drain that starts after the move reads the lane's
    row; and a flush that comes while a move is being written waits for it and then
    takes nothing."""
    store, url = pg
    ws = await _online(store, "w", max_concurrency=4)
    lane = await _conn(url)
    try:
        t = lane.transaction()
        await t.start()
        assert await _accept(lane, "w") is not None
        move = asyncio.create_task(store.move_workspace(ws.id, WorkspaceState.DRAINING))
        await asyncio.sleep(0.3)
        assert not move.done()  # waits for the lane's flush
        await t.commit()
        assert (await move) is not None
        n = await lane.fetchval(
            "SELECT count(*) FROM deliveries WHERE workspace_id = $1 AND status = 'in_flight'"
            " AND lease_owner = $2",
            ws.id,
            OWNER,
        )
        assert n == 1  # what a drain reads once the move is committed
        # the other order: a move being written (its lock taken), then a flush
        await lane.execute("UPDATE workspaces SET state = 'online' WHERE id = $1", ws.id)
        other = await _conn(url)
        try:
            t2 = other.transaction()
            await t2.start()
            await other.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", LOCK, ws.id)
            await other.execute("UPDATE workspaces SET state = 'draining' WHERE id = $1", ws.id)
            flush = asyncio.create_task(_accept(lane, "w"))
            await asyncio.sleep(0.3)
            assert not flush.done()
            await t2.commit()
            assert await flush is None  # it saw the move
        finally:
            await other.close()
        # a deploy's peer too
        await lane.execute("UPDATE workspaces SET state = 'online' WHERE id = $1", ws.id)
        t3 = lane.transaction()
        await t3.start()
        assert await _accept(lane, "w") is not None
        peer = asyncio.create_task(store.update_workspace(ws.id, peer=None))
        await asyncio.sleep(0.3)
        assert not peer.done()
        await t3.commit()
        await peer
    finally:
        await lane.close()
