"""The engines bench/delivery_log.py drives: berth's Store port, and bare SQL beside it.

Every engine has the same three steps. `claim(ws, owner, room)` takes at most `room`
deliveries of the workspace (berth instead passes the workspace's capacity and counts what
is in flight itself, under its advisory lock, as its dispatcher does).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from berth.domain.delivery import Delivery, DeliveryStatus
from berth.ports import Settle, Store

MAX_CONCURRENCY = 4
LEASE = 30.0
REQUEST = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {
            "message": {"role": "ROLE_USER", "messageId": "m", "parts": [{"text": "bench " * 20}]}
        },
    }
).encode()
REPLY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {"role": "ROLE_AGENT", "messageId": "r", "parts": [{"text": "echo " * 20}]},
    }
).encode()
HEADERS = '{"a2a-version": "1.0"}'
# As berth's functions run: plans that use the indexes whatever the (fresh, empty) statistics say.
INDEXES_ONLY = {"enable_seqscan": "off"}


class Engine(Protocol):
    async def accept(self, delivery_id: str, ws_id: str) -> None: ...
    # accept, and claim at most `room` of the workspace (oldest first) in the same commit
    # where the engine can (berth's proxy: a message to a workspace with room)
    async def accept_claim(
        self, delivery_id: str, ws_id: str, owner: str, room: int
    ) -> list[str]: ...
    async def claim(self, ws_id: str, owner: str, room: int) -> list[str]: ...
    async def settle(self, delivery_id: str, owner: str) -> None: ...
    # (flushes, items) of accept, claim and settle so far: statements sent and calls made
    # (a flush of n items is one statement and one commit); [] when not counted
    def flushes(self) -> list[tuple[int, int]]: ...


class BerthEngine:
    """Through the Store port, called as berth's proxy and dispatcher call it."""

    def __init__(self, store: Store, capacity: int) -> None:
        self.store = store
        self.capacity = capacity

    async def accept(self, delivery_id: str, ws_id: str) -> None:
        _, created = await self.store.accept(self._delivery(delivery_id, ws_id))
        assert created

    async def accept_claim(self, delivery_id: str, ws_id: str, owner: str, room: int) -> list[str]:
        d, created, got = await self.store.accept_claim(
            self._delivery(delivery_id, ws_id),
            capacity=self.capacity,
            owner=owner,
            lease_seconds=LEASE,
            now=time.time(),
        )
        assert created
        return [g.id for g in got]

    @staticmethod
    def _delivery(delivery_id: str, ws_id: str) -> Delivery:
        now = time.time()
        return Delivery(
            id=delivery_id,
            workspace_id=ws_id,
            message_id=str(uuid.uuid4()),
            seq=0,
            method="SendMessage",
            request=REQUEST,
            headers={"a2a-version": "1.0"},
            created_at=now,
            updated_at=now,
        )

    async def claim(self, ws_id: str, owner: str, room: int) -> list[str]:
        got = await self.store.claim(
            ws_id, capacity=self.capacity, owner=owner, lease_seconds=LEASE, now=time.time()
        )
        return [d.id for d in got]

    async def settle(self, delivery_id: str, owner: str) -> None:
        how = Settle(DeliveryStatus.DONE, reply=REPLY, reply_status=200)
        d = await self.store.settle(delivery_id, owner, how, time.time())
        assert d is not None and d.status is DeliveryStatus.DONE

    def flushes(self) -> list[tuple[int, int]]:
        g = getattr(self.store, "writes", None)  # PostgresStore's group commit
        return [] if g is None else [(g.batches + g.retried, g.items)]


_BARE_COLS = (
    "id, workspace_id, message_id, method, request, headers, status, attempts, forwards, "
    "not_before, created_at, updated_at"
)


class BarePgEngine:
    """Bare SQL on asyncpg, one commit per step per delivery: autocommit statements on
    connections kept in a free list (one per concurrent call), a claim takes one row. No
    berth code."""

    INSERT = f"INSERT INTO deliveries ({_BARE_COLS}) VALUES ($1, $2, $3, 'SendMessage', $4, $5, 'queued', 0, 0, 0, $6, $6)"
    CLAIM = (
        "UPDATE deliveries SET status = 'in_flight', lease_owner = $2, lease_until = $3, "
        "forwards = forwards + 1, first_forwarded_at = COALESCE(first_forwarded_at, $4), updated_at = $4 "
        "WHERE seq = (SELECT seq FROM deliveries WHERE workspace_id = $1 AND status = 'queued' "
        "AND not_before <= $4 ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id"
    )
    ACK = (
        "UPDATE deliveries SET status = 'done', reply = $2, reply_status = 200, lease_owner = NULL, "
        "lease_until = NULL, finished_at = $3, updated_at = $3 WHERE id = $1"
    )

    def __init__(self, url: str) -> None:
        self.url = url
        self._all: list[Any] = []
        self._free: list[Any] = []
        self.calls = [0, 0, 0]

    async def _run(self, method: str, *args: Any) -> Any:
        import asyncpg

        if self._free:
            c = self._free.pop()
        else:
            c = await asyncpg.connect(self.url, server_settings=INDEXES_ONLY)
            self._all.append(c)
        try:
            return await getattr(c, method)(*args)
        finally:
            self._free.append(c)

    async def accept(self, delivery_id: str, ws_id: str) -> None:
        self.calls[0] += 1
        now = time.time()
        await self._run(
            "execute", self.INSERT, delivery_id, ws_id, str(uuid.uuid4()), REQUEST, HEADERS, now
        )

    async def accept_claim(self, delivery_id: str, ws_id: str, owner: str, room: int) -> list[str]:
        await self.accept(delivery_id, ws_id)  # one commit per step: two
        return await self.claim(ws_id, owner, room)

    async def claim(self, ws_id: str, owner: str, room: int) -> list[str]:
        self.calls[1] += 1
        now = time.time()
        got = await self._run("fetchval", self.CLAIM, ws_id, owner, now + LEASE, now)
        return [] if got is None else [got]

    async def settle(self, delivery_id: str, owner: str) -> None:
        self.calls[2] += 1
        await self._run("execute", self.ACK, delivery_id, REPLY, time.time())

    def flushes(self) -> list[tuple[int, int]]:
        return [(n, n) for n in self.calls]

    async def close(self) -> None:
        for c in self._all:
            await c.close()


class Gather:
    """The bare baseline's own group commit (no berth code): calls made while the flushes
    run go together in the next one; an idle call is flushed at once; `lanes` flushes may
    run at the same time (as berth's)."""

    def __init__(self, flush: Callable[[list[Any]], Awaitable[list[Any]]], lanes: int) -> None:
        self.flush = flush
        self.lanes = lanes
        self.pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self.running = 0
        self.batches = self.items = 0

    async def __call__(self, item: Any) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((item, fut))
        if self.running < self.lanes:
            self.running += 1
            asyncio.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                self.batches += 1
                self.items += len(batch)
                try:
                    out = await self.flush([i for i, _ in batch])
                except Exception as e:
                    for _, f in batch:
                        f.set_exception(e)
                    continue
                for (_, f), r in zip(batch, out, strict=True):
                    f.set_result(r)
                await asyncio.sleep(0)
        finally:
            self.running -= 1


class BarePgBatchedEngine:
    """Bare SQL batched the way berth batches: the calls made while a flush runs go together
    in the next, one transaction (one commit) holding one multi-row INSERT for the accepts,
    one UPDATE claiming for every waiting workspace, one UPDATE ... FROM unnest for the
    acks. No advisory lock, no in-flight count, no whole rows returned."""

    INSERT = (
        f"INSERT INTO deliveries ({_BARE_COLS}) SELECT i, w, m, 'SendMessage', $4, $5, 'queued', 0, 0, 0, $6, $6 "
        "FROM unnest($1::text[], $2::text[], $3::text[]) AS u(i, w, m)"
    )
    CLAIM = (
        "WITH picked AS (SELECT p.seq, u.k FROM unnest($1::text[], $2::int[]) WITH ORDINALITY AS u(w, n, k), "
        "LATERAL (SELECT seq FROM deliveries WHERE workspace_id = u.w AND status = 'queued' AND not_before <= $4 "
        "ORDER BY seq LIMIT u.n FOR UPDATE SKIP LOCKED) AS p) "
        "UPDATE deliveries AS d SET status = 'in_flight', lease_owner = $3, lease_until = $5, "
        "forwards = d.forwards + 1, first_forwarded_at = COALESCE(d.first_forwarded_at, $4), updated_at = $4 "
        "FROM picked WHERE d.seq = picked.seq RETURNING picked.k, d.id"
    )
    ACK = (
        "UPDATE deliveries AS d SET status = 'done', reply = $2, reply_status = 200, lease_owner = NULL, "
        "lease_until = NULL, finished_at = $3, updated_at = $3 FROM unnest($1::text[]) AS u(i) WHERE d.id = u.i"
    )

    def __init__(self, url: str) -> None:
        self.url = url
        self._all: list[Any] = []
        self._free: list[Any] = []
        self.writes = Gather(self._flush, lanes=2)

    async def _flush(self, items: list[tuple[str, Any]]) -> list[Any]:
        import asyncpg

        if self._free:
            c = self._free.pop()
        else:
            c = await asyncpg.connect(self.url, server_settings=INDEXES_ONLY)
            self._all.append(c)
        try:
            return await self._write(c, items)
        finally:
            self._free.append(c)

    async def _write(self, c: Any, items: list[tuple[str, Any]]) -> list[Any]:
        now = time.time()
        acks = [x for kind, x in items if kind == "ack"]
        accepts = [x[:2] for kind, x in items if kind in ("accept", "accept_claim")]
        claims = [(i, x) for i, (kind, x) in enumerate(items) if kind == "claim"]
        # an accept_claim: its accept with the others, then a claim of its workspace
        claims += [(i, (x[1], x[2])) for i, (kind, x) in enumerate(items) if kind == "accept_claim"]
        out: list[Any] = [None] * len(items)
        async with c.transaction():
            if acks:
                await c.execute(self.ACK, acks, REPLY, now)
            if accepts:
                ids, wss = zip(*accepts, strict=True)
                ms = [str(uuid.uuid4()) for _ in accepts]
                await c.execute(self.INSERT, list(ids), list(wss), ms, REQUEST, HEADERS, now)
            if claims:
                ws_rooms = [x for _, x in claims]
                got = await c.fetch(
                    self.CLAIM,
                    [w for w, _ in ws_rooms],
                    [n for _, n in ws_rooms],
                    "bench",
                    now,
                    now + LEASE,
                )
                for i, _ in claims:
                    out[i] = []
                for r in got:
                    out[claims[r["k"] - 1][0]].append(r["id"])
        return out

    async def accept(self, delivery_id: str, ws_id: str) -> None:
        await self.writes(("accept", (delivery_id, ws_id)))

    async def claim(self, ws_id: str, owner: str, room: int) -> list[str]:
        ids: list[str] = await self.writes(("claim", (ws_id, room)))
        return ids

    async def accept_claim(self, delivery_id: str, ws_id: str, owner: str, room: int) -> list[str]:
        ids: list[str] = await self.writes(("accept_claim", (delivery_id, ws_id, room)))
        return ids

    async def settle(self, delivery_id: str, owner: str) -> None:
        await self.writes(("ack", delivery_id))

    def flushes(self) -> list[tuple[int, int]]:
        return [(self.writes.batches, self.writes.items)]

    async def close(self) -> None:
        for c in self._all:
            await c.close()


class BareSqliteEngine:
    """Bare SQL on sqlite3: one connection, autocommit statements, one thread (as SqliteStore)."""

    INSERT = f"INSERT INTO deliveries ({_BARE_COLS}) VALUES (?, ?, ?, 'SendMessage', ?, ?, 'queued', 0, 0, 0, ?, ?)"
    CLAIM = (
        "UPDATE deliveries SET status = 'in_flight', lease_owner = ?2, lease_until = ?3, "
        "forwards = forwards + 1, first_forwarded_at = COALESCE(first_forwarded_at, ?4), updated_at = ?4 "
        "WHERE seq = (SELECT seq FROM deliveries WHERE workspace_id = ?1 AND status = 'queued' "
        "AND not_before <= ?4 ORDER BY seq LIMIT 1) RETURNING id"
    )
    ACK = (
        "UPDATE deliveries SET status = 'done', reply = ?, reply_status = 200, lease_owner = NULL, "
        "lease_until = NULL, finished_at = ?, updated_at = ? WHERE id = ?"
    )

    def __init__(self, path: str, synchronous: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._c = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._c.execute("PRAGMA journal_mode=WAL")
        self._c.execute(f"PRAGMA synchronous={synchronous}")

    async def _run(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def accept(self, delivery_id: str, ws_id: str) -> None:
        now = time.time()
        args = (delivery_id, ws_id, str(uuid.uuid4()), REQUEST, HEADERS, now, now)
        await self._run(lambda: self._c.execute(self.INSERT, args))

    async def accept_claim(self, delivery_id: str, ws_id: str, owner: str, room: int) -> list[str]:
        await self.accept(delivery_id, ws_id)
        return await self.claim(ws_id, owner, room)

    async def claim(self, ws_id: str, owner: str, room: int) -> list[str]:
        now = time.time()
        row = await self._run(
            lambda: self._c.execute(self.CLAIM, (ws_id, owner, now + LEASE, now)).fetchone()
        )
        return [] if row is None else [row[0]]

    async def settle(self, delivery_id: str, owner: str) -> None:
        now = time.time()
        await self._run(lambda: self._c.execute(self.ACK, (REPLY, now, now, delivery_id)))

    def flushes(self) -> list[tuple[int, int]]:
        return []

    async def close(self) -> None:
        await self._run(self._c.close)
        self._pool.shutdown()
