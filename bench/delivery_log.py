"""The delivery log's hot path through the Store port: accepted -> claimed -> settled done, per second.

    python bench/delivery_log.py [--backends sqlite,postgres] [--count 5000] [--finished 0,1000000]
                                 [--dispatchers 1,8] [--database-url postgresql://postgres@127.0.0.1:5432/test]
                                 [--quick]

Producers accept deliveries (round robin over 8 workspaces with max_concurrency 4) while
dispatchers -- asyncio tasks, each looping over the workspaces: claim up to the capacity
left, then settle each claimed delivery done, as berth's dispatcher does -- drain them.
Each configuration runs a fixed number of deliveries (after a short warm-up) and reports
deliveries/s end to end and the p50/p99 of accept -> settled.

Backends: SQLite (a file in a temporary directory, synchronous=NORMAL, the default, and
FULL) and PostgreSQL (a fresh database created and dropped by the bench, server settings
as they are: fsync and synchronous_commit are printed). Each level of --finished starts
from a table holding that many 'done' rows; rows a run adds are deleted before the next.

Baseline, measured in the same run with the same producers/dispatchers/workspaces and the
same table and indexes: bare SQL without berth code -- a plain INSERT to accept, and a
claim+ack loop of one `UPDATE ... WHERE seq = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)
RETURNING` then `UPDATE ... SET status = 'done'` per delivery (asyncpg, one connection per
task; sqlite3 through one thread, like SqliteStore). "berth/bare" is the throughput ratio.

Latency is accept -> settled at saturation: with a closed window it is mostly queueing
(about window / throughput), so compare it between rows rather than read it as service time.
"cpu" is this process's CPU time over wall time (the client side: Python, asyncpg, sqlite3);
each row also shows the load average and how busy the whole machine was during it.

Figures, not assertions. Other jobs on the machine skew them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from berth.adapters.sql.sqlite import SqliteStore
from berth.domain.delivery import Delivery, DeliveryStatus
from berth.domain.lifecycle import WorkspaceState
from berth.domain.workspace import Runtime, Workspace
from berth.ports import Settle, Store

WORKSPACES = 8
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
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
ROLE: contextvars.ContextVar[str] = contextvars.ContextVar(
    "role", default="main"
)  # which task is calling


# the engines: one hot path through berth's Store, one in bare SQL ---------------------------
class Engine(Protocol):
    async def accept(self, delivery_id: str, ws_id: str) -> None: ...
    async def claim(self, ws_id: str, owner: str) -> list[str]: ...
    async def settle(self, delivery_id: str, owner: str) -> None: ...


class BerthEngine:
    """Through the Store port, called as berth's proxy and dispatcher call it."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def accept(self, delivery_id: str, ws_id: str) -> None:
        now = time.time()
        d = Delivery(
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
        _, created = await self.store.accept(d)
        assert created

    async def claim(self, ws_id: str, owner: str) -> list[str]:
        got = await self.store.claim(
            ws_id, capacity=MAX_CONCURRENCY, owner=owner, lease_seconds=LEASE, now=time.time()
        )
        return [d.id for d in got]

    async def settle(self, delivery_id: str, owner: str) -> None:
        how = Settle(DeliveryStatus.DONE, reply=REPLY, reply_status=200)
        d = await self.store.settle(delivery_id, owner, how, time.time())
        assert d is not None and d.status is DeliveryStatus.DONE


_BARE_COLS = (
    "id, workspace_id, message_id, method, request, headers, status, attempts, forwards, "
    "not_before, created_at, updated_at"
)


class BarePgEngine:
    """Bare SQL on asyncpg: one connection per task, autocommit, no berth code."""

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
        self._conns: dict[str, Any] = {}

    async def _conn(self) -> Any:
        import asyncpg

        key = ROLE.get()
        c = self._conns.get(key)
        if c is None:
            c = self._conns[key] = await asyncpg.connect(self.url)
        return c

    async def accept(self, delivery_id: str, ws_id: str) -> None:
        c = await self._conn()
        await c.execute(
            self.INSERT,
            delivery_id,
            ws_id,
            str(uuid.uuid4()),
            REQUEST,
            '{"a2a-version": "1.0"}',
            time.time(),
        )

    async def claim(self, ws_id: str, owner: str) -> list[str]:
        c = await self._conn()
        now = time.time()
        got = await c.fetchval(self.CLAIM, ws_id, owner, now + LEASE, now)
        return [] if got is None else [got]

    async def settle(self, delivery_id: str, owner: str) -> None:
        c = await self._conn()
        await c.execute(self.ACK, delivery_id, REPLY, time.time())

    async def close(self) -> None:
        for c in self._conns.values():
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
        args = (delivery_id, ws_id, str(uuid.uuid4()), REQUEST, '{"a2a-version": "1.0"}', now, now)
        await self._run(lambda: self._c.execute(self.INSERT, args))

    async def claim(self, ws_id: str, owner: str) -> list[str]:
        now = time.time()
        row = await self._run(
            lambda: self._c.execute(self.CLAIM, (ws_id, owner, now + LEASE, now)).fetchone()
        )
        return [] if row is None else [row[0]]

    async def settle(self, delivery_id: str, owner: str) -> None:
        now = time.time()
        await self._run(lambda: self._c.execute(self.ACK, (REPLY, now, now, delivery_id)))

    async def close(self) -> None:
        await self._run(self._c.close)
        self._pool.shutdown()


# the load ---------------------------------------------------------------------------------
@dataclass
class Result:
    n: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0  # CPU seconds of this process (client side: Python, drivers, sqlite)

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


async def drive(
    eng: Engine, ws_ids: list[str], count: int, dispatchers: int, producers: int, window: int
) -> Result:
    """Accept `count` deliveries and wait until all are settled; at most `window` outstanding."""
    t0s: dict[str, float] = {}
    lat: list[float] = []
    sem = asyncio.Semaphore(window)
    work = asyncio.Event()
    finished = asyncio.Event()
    todo = iter(range(count))

    async def producer(k: int) -> None:
        ROLE.set(f"producer-{k}")
        for i in todo:  # shared: the producers split the count between them
            await sem.acquire()
            did = str(uuid.uuid4())
            t0s[did] = time.perf_counter()
            await eng.accept(did, ws_ids[i % len(ws_ids)])
            work.set()

    async def settle_one(did: str, owner: str) -> None:
        await eng.settle(did, owner)
        lat.append(time.perf_counter() - t0s.pop(did))
        sem.release()
        if len(lat) >= count:
            finished.set()
            work.set()

    async def dispatcher(k: int) -> None:
        ROLE.set(f"dispatcher-{k}")
        owner = f"bench-{os.getpid()}-{k}"
        order = ws_ids[k % len(ws_ids) :] + ws_ids[: k % len(ws_ids)]
        while not finished.is_set():
            work.clear()
            claimed = 0
            for ws in order:
                ids = await eng.claim(ws, owner)
                claimed += len(ids)
                if ids:
                    await asyncio.gather(*(settle_one(did, owner) for did in ids))
            if not claimed and not finished.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(work.wait(), 0.05)

    cpu0, start = time.process_time(), time.perf_counter()
    tasks = [asyncio.create_task(producer(i)) for i in range(producers)]
    tasks += [asyncio.create_task(dispatcher(k)) for k in range(dispatchers)]
    await asyncio.gather(*tasks)
    return Result(count, time.perf_counter() - start, lat, time.process_time() - cpu0)


# the backends -----------------------------------------------------------------------------
def make_workspaces() -> list[Workspace]:
    now = time.time()
    return [
        Workspace(
            id=uuid.uuid4().hex,
            name=f"bench-{i}",
            runtime=Runtime.EXTERNAL,
            url="http://127.0.0.1:9/",
            max_concurrency=MAX_CONCURRENCY,
            state=WorkspaceState.ONLINE,
            token_hash=uuid.uuid4().hex,
            created_at=now,
            updated_at=now,
        )
        for i in range(WORKSPACES)
    ]


EngineFactory = Callable[[], Awaitable[tuple[Engine, Callable[[], Awaitable[None]]]]]
_SEED_COLS = (
    "id, workspace_id, message_id, method, request, headers, status, attempts, forwards, reply, "
    "reply_status, not_before, created_at, first_forwarded_at, finished_at, updated_at"
)
_QUEUED_PICK = (
    "SELECT seq FROM deliveries WHERE workspace_id = {ws} AND status = 'queued' "
    "AND not_before <= {now} ORDER BY seq LIMIT 4"
)
_BUSY = "SELECT count(*) FROM deliveries WHERE workspace_id = {ws} AND status = 'in_flight'"


@dataclass
class Variant:
    label: str
    berth: EngineFactory
    bare: EngineFactory


class SqliteBackend:
    name = "sqlite"

    def __init__(self, tmp: Path, modes: list[str]) -> None:
        self.tmp, self.modes = tmp, modes
        self.ws: list[Workspace] = []
        self.path = ""
        self.seed_max = 0
        self._n = 0

    async def setup(self) -> None:
        self.ws = make_workspaces()

    def info(self) -> str:
        return f"SQLite {sqlite3.sqlite_version}, WAL, file in {self.tmp}"

    def _c(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        c.execute("PRAGMA journal_mode=WAL")
        return c

    async def seed(self, n: int) -> None:
        """A fresh file per level: the schema from SqliteStore.migrate, then `n` done rows."""
        self._n += 1
        self.path = str(self.tmp / f"log-{self._n}.db")
        store = SqliteStore(self.path)
        await store.migrate()
        for ws in self.ws:
            await store.create_workspace(ws)
        await store.close()
        c = self._c()
        c.execute("PRAGMA cache_size=-262144")
        t0 = time.time() - 2 * 86400
        c.execute("BEGIN")
        c.execute(
            "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :n) "
            f"INSERT INTO deliveries ({_SEED_COLS}) SELECT lower(hex(randomblob(16))), "
            "json_extract(:ws, '$[' || (n % :w) || ']'), lower(hex(randomblob(16))), 'SendMessage', :req, '{}', "
            "'done', 0, 1, :rep, 200, 0, :t0 + n * 0.0001, :t0 + n * 0.0001, :t0 + n * 0.0001 + 0.01, "
            ":t0 + n * 0.0001 + 0.01 FROM g",
            {
                "n": n,
                "ws": json.dumps([w.id for w in self.ws]),
                "w": len(self.ws),
                "req": REQUEST,
                "rep": REPLY,
                "t0": t0,
            },
        ) if n else None
        c.execute("COMMIT")
        c.execute("ANALYZE")
        self.seed_max = c.execute("SELECT coalesce(max(seq), 0) FROM deliveries").fetchone()[0]
        c.close()

    async def cleanup(self) -> None:
        c = self._c()
        c.execute("DELETE FROM deliveries WHERE seq > ?", (self.seed_max,))
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        c.close()

    async def explain(self) -> list[str]:
        c = self._c()
        out = []
        for what, sql in (("claim pick", _QUEUED_PICK), ("in-flight count", _BUSY)):
            plan = c.execute(
                "EXPLAIN QUERY PLAN " + sql.format(ws=":ws", now=":now"),
                {"ws": self.ws[0].id, "now": time.time()},
            )
            out.append(f"{what}: " + "; ".join(r[3] for r in plan))
        c.close()
        return out

    def variants(self) -> list[Variant]:
        out = []
        for mode in self.modes:

            async def berth(mode: str = mode) -> tuple[Engine, Callable[[], Awaitable[None]]]:
                store = SqliteStore(self.path, synchronous=mode)
                await store.migrate()
                return BerthEngine(store), store.close

            async def bare(mode: str = mode) -> tuple[Engine, Callable[[], Awaitable[None]]]:
                eng = BareSqliteEngine(self.path, mode)
                return eng, eng.close

            out.append(Variant(f"sqlite {mode}", berth, bare))
        return out

    async def close(self) -> None:
        pass


class PgBackend:
    name = "postgres"

    def __init__(self, admin_url: str, pool_size: int | None) -> None:
        self.admin_url = admin_url
        self.pool_size = pool_size
        self.db = f"berth_bench_{os.getpid()}"
        parts = urlsplit(admin_url)
        self.url = urlunsplit(parts._replace(path="/" + self.db))
        self.ws: list[Workspace] = []
        self.seed_max = 0
        self.conn: Any = None
        self.settings: dict[str, str] = {}

    async def setup(self) -> None:
        import asyncpg

        from berth.adapters.sql.postgres import PostgresStore

        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{self.db}"')
        finally:
            await admin.close()
        store = PostgresStore(self.url)
        await store.migrate()
        self.ws = make_workspaces()
        for ws in self.ws:
            await store.create_workspace(ws)
        await store.close()
        self.conn = await asyncpg.connect(self.url)
        for k in (
            "server_version",
            "fsync",
            "synchronous_commit",
            "wal_sync_method",
            "shared_buffers",
            "max_connections",
        ):
            self.settings[k] = await self.conn.fetchval(f"SHOW {k}")

    def info(self) -> str:
        s = self.settings
        return (
            f"PostgreSQL {s['server_version']}: SHOW fsync = {s['fsync']}, SHOW synchronous_commit = "
            f"{s['synchronous_commit']}, wal_sync_method {s['wal_sync_method']}, shared_buffers "
            f"{s['shared_buffers']}; database {self.db} (created and dropped by the bench); "
            f"PostgresStore pool max_size {self.pool_size or 'default'}"
        )

    async def seed(self, n: int) -> None:
        c = self.conn
        await c.execute("TRUNCATE deliveries")
        if n:
            await c.execute(
                "SET synchronous_commit = off"
            )  # this session only: the seed, not the runs
            await c.execute(
                f"INSERT INTO deliveries ({_SEED_COLS}) SELECT md5('d' || g || $7)::uuid::text, "
                "($1::text[])[1 + g % $2], md5('m' || g || $7)::uuid::text, 'SendMessage', $3, '{}', 'done', 0, 1, "
                "$4, 200, 0, $5 + g * 0.0001, $5 + g * 0.0001, $5 + g * 0.0001 + 0.01, $5 + g * 0.0001 + 0.01 "
                "FROM generate_series(1, $6) AS g",
                [w.id for w in self.ws],
                len(self.ws),
                REQUEST,
                REPLY,
                time.time() - 2 * 86400,
                n,
                uuid.uuid4().hex,
            )
            await c.execute("RESET synchronous_commit")
        await c.execute("VACUUM ANALYZE deliveries")
        self.seed_max = await c.fetchval("SELECT coalesce(max(seq), 0) FROM deliveries")

    async def cleanup(self) -> None:
        await self.conn.execute("DELETE FROM deliveries WHERE seq > $1", self.seed_max)
        await self.conn.execute("VACUUM deliveries")

    async def explain(self) -> list[str]:
        from berth.adapters.sql.postgres import _CLAIM_SQL

        c = self.conn
        now = time.time()
        ws = self.ws[0].id
        out = []
        plan = await c.fetch("EXPLAIN " + _CLAIM_SQL, ws, now, 4, "explain", now + LEASE)
        out.append("claim (custom plan): " + " | ".join(r[0].strip() for r in plan))
        await c.execute("SET plan_cache_mode = force_generic_plan")
        try:
            await c.execute(
                "PREPARE bench_claim(text, float8, bigint, text, float8) AS " + _CLAIM_SQL
            )
            plan = await c.fetch(
                f"EXPLAIN EXECUTE bench_claim('{ws}', {now}, 4, 'explain', {now + LEASE})"
            )
            out.append("claim (generic plan): " + " | ".join(r[0].strip() for r in plan))
            await c.execute("DEALLOCATE bench_claim")
        finally:
            await c.execute("RESET plan_cache_mode")
        plan = await c.fetch("EXPLAIN " + _BUSY.format(ws="$1"), ws)
        out.append("in-flight count: " + " | ".join(r[0].strip() for r in plan))
        return out

    def variants(self) -> list[Variant]:
        from berth.adapters.sql.postgres import PostgresStore

        async def berth() -> tuple[Engine, Callable[[], Awaitable[None]]]:
            store = PostgresStore(
                self.url, **({"max_size": self.pool_size} if self.pool_size else {})
            )
            await store.migrate()  # as berth starts: makes the pool before concurrent first use
            return BerthEngine(store), store.close

        async def bare() -> tuple[Engine, Callable[[], Awaitable[None]]]:
            eng = BarePgEngine(self.url)
            return eng, eng.close

        return [Variant("postgres", berth, bare)]

    async def close(self) -> None:
        import asyncpg

        if self.conn is not None:
            await self.conn.close()
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        finally:
            await admin.close()


# the run ----------------------------------------------------------------------------------
def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def host_cpu() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of the whole machine, from /proc/stat (zeros elsewhere)."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return 0, 0, 0
    user, nice, system, idle, iowait, irq, softirq, steal = f
    return user + nice + system + irq + softirq + steal, steal, sum(f)


def host_busy(before: tuple[int, int, int]) -> str:
    after = host_cpu()
    busy, steal, total = (a - b for a, b in zip(after, before, strict=True))
    return (
        f"host cpu busy {busy / total * 100:.0f}% (steal {steal / total * 100:.0f}%)"
        if total
        else ""
    )


async def measure(
    factory: EngineFactory,
    backend: SqliteBackend | PgBackend,
    args: argparse.Namespace,
    dispatchers: int,
) -> Result:
    eng, close = await factory()
    ws_ids = [w.id for w in backend.ws]
    try:
        await drive(eng, ws_ids, args.warmup, dispatchers, args.producers, args.window)
        await backend.cleanup()
        return await drive(eng, ws_ids, args.count, dispatchers, args.producers, args.window)
    finally:
        await close()
        await backend.cleanup()


HEAD = (
    f"{'backend':<16}{'disp':>5}{'finished':>10} | {'berth/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'cpu':>6} | "
    f"{'bare/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'cpu':>6} | {'berth/bare':>10}"
)


def row(label: str, disp: int, finished: int, b: Result, r: Result) -> str:
    def cols(x: Result) -> str:
        return f"{x.rate:>8.0f}{x.pct(50):>8.2f}{x.pct(99):>8.2f}{x.cpu / x.seconds * 100:>5.0f}%"

    return f"{label:<16}{disp:>5}{finished:>10,} | {cols(b)} | {cols(r)} | {b.rate / r.rate * 100:>9.0f}%"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--count", type=int, default=5000, help="deliveries per configuration")
    ap.add_argument("--finished", default="0,1000000", help="'done' rows already in the table")
    ap.add_argument("--dispatchers", default="1,8")
    ap.add_argument("--producers", type=int, default=4, help="concurrent accepting tasks")
    ap.add_argument(
        "--window", type=int, default=64, help="most deliveries accepted but not yet settled"
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=500,
        help="deliveries run (and dropped) before each measurement",
    )
    ap.add_argument("--sqlite-sync", default="NORMAL,FULL")
    ap.add_argument(
        "--database-url",
        default=os.environ.get("BERTH_BENCH_PG", DEFAULT_PG),
        help="an existing database to connect to for CREATE/DROP DATABASE",
    )
    ap.add_argument(
        "--pool-size", type=int, help="PostgresStore max_size (default: the store's own)"
    )
    ap.add_argument("--quick", action="store_true", help="small numbers for a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.count, args.warmup = 200, 30
        if args.finished == "0,1000000":
            args.finished = "0,10000"
    levels = [int(x) for x in args.finished.split(",")]
    disps = [int(x) for x in args.dispatchers.split(",")]
    started = time.perf_counter()
    print(
        f"# berth delivery log benchmark: {os.cpu_count()} cores, load average {load()}; {args.count} "
        f"deliveries per run (+{args.warmup} warm-up), {args.producers} producers, window {args.window}, "
        f"{WORKSPACES} workspaces x max_concurrency {MAX_CONCURRENCY}"
    )
    print(
        "# cpu = CPU time of the bench process (client side) / wall time; berth/bare = throughput ratio"
    )
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as tmp:
        for name in args.backends.split(","):
            backend: SqliteBackend | PgBackend
            if name == "sqlite":
                backend = SqliteBackend(Path(tmp), [m.upper() for m in args.sqlite_sync.split(",")])
            elif name == "postgres":
                backend = PgBackend(args.database_url, args.pool_size)
            else:
                raise SystemExit(f"unknown backend {name!r}")
            await backend.setup()
            try:
                print(f"# {backend.info()}")
                for finished in levels:
                    t = time.perf_counter()
                    await backend.seed(finished)
                    print(
                        f"# {name}: {finished:,} finished rows in place ({time.perf_counter() - t:.1f} s)"
                    )
                    if finished == max(levels):
                        for line in await backend.explain():
                            print(f"#   plan with {finished:,} finished rows, {line}")
                    print(HEAD)
                    for v in backend.variants():
                        for d in disps:
                            cpu0 = host_cpu()
                            b = await measure(v.berth, backend, args, d)
                            r = await measure(v.bare, backend, args, d)
                            lines.append(row(v.label, d, finished, b, r))
                            print(lines[-1] + f"   (load {load()}, {host_busy(cpu0)})", flush=True)
            finally:
                await backend.close()
    print()
    print(HEAD)
    print("\n".join(lines))
    print(f"# total {time.perf_counter() - started:.0f} s; load average at the end {load()}")


if __name__ == "__main__":
    asyncio.run(main())
