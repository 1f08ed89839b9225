"""The SQLite store's hot path does not grow with finished deliveries.

Counted in SQLite VM instructions (deterministic, unlike a timing): a claim, the pending
counts and the upkeep queries cost the same with 0 or 20,000 finished deliveries of the
same workspace in the table, with no ANALYZE statistics (a fresh install has none, and
without them the planner preferred the full (workspace_id, seq) index).
"""

from __future__ import annotations

import time
from pathlib import Path

from berth.adapters.sql.sqlite import SqliteStore
from berth.domain.delivery import DeliveryStatus as D
from berth.ports import Settle
from tests.contract.test_store import make_d


class Steps:
    def __init__(self, store: SqliteStore) -> None:
        self.n = 0
        if store._hot_conn is None:  # the event loop's read connection, for the message path
            store._hot_conn = store._open()
        for conn in (store._connect(), store._hot_conn, store.writes._connection()):
            conn.set_progress_handler(self._tick, 100)

    def _tick(self) -> int:
        self.n += 100
        return 0


async def _hot_path_steps(store: SqliteStore) -> int:
    steps = Steps(store)
    await store.accept(make_d("w1", f"fresh-{time.monotonic_ns()}"))
    got = await store.claim("w1", capacity=4, owner="me", lease_seconds=30, now=time.time())
    for _ in range(2):  # the one-statement accept of a free workspace, then a full one
        _, _, more = await store.accept_claim(
            make_d("w1", f"at-once-{time.monotonic_ns()}"),
            capacity=len(got) + 1,
            owner="me",
            lease_seconds=30,
            now=time.time(),
        )
        got += more
    await store.pending("w1")
    await store.queue_head("w1")
    await store.requeue_expired(time.time())
    await store.expire_due(time.time())
    for d in got:
        await store.settle(d.id, "me", Settle(D.DONE), time.time())
    return steps.n


async def _with_finished(path: Path, n: int) -> SqliteStore:
    store = SqliteStore(str(path))
    await store.migrate()
    conn = store._connect()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO deliveries (id, workspace_id, message_id, method, request, headers, status, attempts, "
        "forwards, not_before, created_at, updated_at, finished_at) "
        "VALUES (?, 'w1', ?, 'message/send', x'7b7d', '{}', 'done', 0, 1, 0, 1, 1, 1)",
        [(f"old-{i}", f"old-{i}") for i in range(n)],
    )
    conn.execute("COMMIT")
    return store


async def test_claim_and_upkeep_do_not_walk_finished_deliveries(tmp_path: Path) -> None:
    empty = await _with_finished(tmp_path / "empty.db", 0)
    full = await _with_finished(tmp_path / "full.db", 20_000)
    try:
        base = await _hot_path_steps(empty)
        loaded = await _hot_path_steps(full)
        assert loaded <= base * 1.5 + 2_000, (base, loaded)
    finally:
        await empty.close()
        await full.close()


async def test_a_message_to_a_free_workspace_is_accepted_and_claimed_in_one_statement(
    tmp_path: Path,
) -> None:
    store = await _with_finished(tmp_path / "one.db", 0)
    try:
        statements: list[str] = []
        store.writes._connection().set_trace_callback(statements.append)

        async def accept_claim(msg: str) -> list[str]:
            statements.clear()
            await store.accept_claim(
                make_d("w1", msg), capacity=1, owner="me", lease_seconds=30, now=time.time()
            )
            return [s.split()[0] for s in statements if s not in ("BEGIN IMMEDIATE", "COMMIT")]

        assert await accept_claim("m1") == ["INSERT"]
        # full: the two-statement path decides (accept, count, nothing claimed, the row read)
        assert await accept_claim("m2") == ["INSERT", "INSERT", "SELECT", "SELECT"]
    finally:
        await store.close()


def test_positional_values_are_the_named_parameters_in_column_order() -> None:
    from berth.adapters.sql import rows

    d = make_d("w1", "m1", reply=b"r", reply_status=200, lease_owner="me", expires_at=5.0)
    assert rows.d_values(d) == tuple(rows.d_params(d)[c] for c in rows.D_COLUMNS)
