"""The delivery log bench's backends (bench/delivery_log.py): SQLite and PostgreSQL, each
making its table, seeding finished rows, cleaning between runs, reading its server's CPU
and WAL, and naming the berth/bare pairs it runs."""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from _log_engines import (
    LEASE,
    MAX_CONCURRENCY,
    REPLY,
    REQUEST,
    BarePgBatchedEngine,
    BarePgEngine,
    BareSqliteEngine,
    BerthEngine,
    Engine,
)

from berth.adapters.sql.sqlite import SqliteStore
from berth.domain.lifecycle import WorkspaceState
from berth.domain.workspace import Runtime, Workspace

__all__ = [
    "EngineFactory",
    "PgBackend",
    "SqliteBackend",
    "Variant",
    "WORKSPACES",
    "pg_backends_cpu",
]

WORKSPACES = 8


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
                return BerthEngine(store, MAX_CONCURRENCY), store.close

            async def bare(mode: str = mode) -> tuple[Engine, Callable[[], Awaitable[None]]]:
                eng = BareSqliteEngine(self.path, mode)
                return eng, eng.close

            out.append(Variant(f"sqlite {mode}", berth, bare))
        return out

    def backend_cpu(self) -> float | None:
        return None  # in this process: counted in "py us"

    async def wal_position(self) -> int | None:
        return None

    async def close(self) -> None:
        pass


def pg_backends_cpu(db: str) -> float:
    """CPU seconds of the PostgreSQL backends serving the database `db` so far (from /proc:
    each backend's command line names its database)."""
    tick = os.sysconf("SC_CLK_TCK")
    mark = f" {db} ".encode()
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if not cmd.startswith(b"postgres: ") or mark not in cmd:
                continue
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(stat[11]) + int(stat[12])  # utime, stime
    return total / tick


class PgBackend:
    name = "postgres"

    def __init__(self, admin_url: str, pool_size: int | None, modes: list[str]) -> None:
        self.admin_url = admin_url
        self.pool_size = pool_size
        self.modes = modes
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

        def berth(group_commit: bool) -> EngineFactory:
            async def make() -> tuple[Engine, Callable[[], Awaitable[None]]]:
                size = {"max_size": self.pool_size} if self.pool_size else {}
                store = PostgresStore(self.url, group_commit=group_commit, **size)
                await store.migrate()  # as berth starts: the pool exists before first use
                return BerthEngine(store, MAX_CONCURRENCY), store.close

            return make

        async def bare() -> tuple[Engine, Callable[[], Awaitable[None]]]:
            eng = BarePgEngine(self.url)
            return eng, eng.close

        async def bare_batched() -> tuple[Engine, Callable[[], Awaitable[None]]]:
            eng_b = BarePgBatchedEngine(self.url)
            return eng_b, eng_b.close

        out = {
            "batched": Variant("pg batched", berth(True), bare_batched),
            "single": Variant("pg single", berth(False), bare),
        }
        return [out[m] for m in self.modes]

    async def wal_position(self) -> int | None:
        """Bytes of WAL written by the cluster so far: a measure of the work the writes did
        that, unlike CPU time and throughput, does not move with the host's speed."""
        return int(await self.conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))

    def backend_cpu(self) -> float | None:
        """CPU seconds of the server processes serving this bench's database so far."""
        return pg_backends_cpu(self.db)

    async def close(self) -> None:
        import asyncpg

        if self.conn is not None:
            await self.conn.close()
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        finally:
            await admin.close()
