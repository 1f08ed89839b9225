"""The roster and the store's reads racing this replica's own writes: a refresh whose read
began before a write must not put back what the write replaced (CI stop 19: a restart's
new agent URL was replaced by the record read before it, so the card probe never found
the new agent, and the restart failed after 30 s with every held message waiting)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from berth.adapters.memory_store import MemoryStore
from berth.adapters.sql.sqlite import SqliteStore
from berth.domain.errors import NotFound
from berth.domain.workspace import Workspace
from berth.services.heartbeats import Heartbeats
from berth.services.roster import Roster
from tests.contract.test_store import T0, make_ws


class SlowReads(MemoryStore):
    """A store whose reads take the value at their start and answer when released: the
    shape of a read that ran before a write committed and came back after it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.reads = 0

    async def get_workspace(self, ref: str) -> Workspace:
        got = await super().get_workspace(ref)
        self.reads += 1
        if self.reads == 1:
            await self.release.wait()
        return got

    async def list_workspaces(self) -> list[Workspace]:
        got = await super().list_workspaces()
        await self.release.wait()
        return got


async def _setup() -> tuple[SlowReads, Roster, Workspace]:
    store = SlowReads()
    ws = make_ws("r1")
    await store.create_workspace(ws)
    roster = Roster(store)
    roster.put(await MemoryStore.get_workspace(store, ws.id))
    return store, roster, ws


async def _write(store: MemoryStore, roster: Roster, ws_id: str, **fields: Any) -> Workspace:
    """What the runner does: write the store, put what it returned."""
    new = await store.update_workspace(ws_id, **fields)
    roster.put(new)
    return new


async def test_a_refresh_read_before_a_write_does_not_replace_the_write() -> None:
    store, roster, ws = await _setup()
    refresh = asyncio.ensure_future(roster.refresh(ws.id))
    await asyncio.sleep(0)  # the read has the old record
    await _write(store, roster, ws.id, agent_url="http://127.0.0.1:4242")
    store.release.set()
    await refresh
    got = roster.peek(ws.id)
    assert got is not None and got.agent_url == "http://127.0.0.1:4242"
    assert store.reads == 2  # it read again rather than keep what it had


async def test_a_full_refresh_keeps_what_was_written_while_it_read() -> None:
    store, roster, ws = await _setup()
    other = make_ws("r2")  # made by another replica: the refresh brings it in
    await store.create_workspace(other)
    refresh = asyncio.ensure_future(roster.refresh())
    await asyncio.sleep(0)
    await _write(store, roster, ws.id, agent_url="http://127.0.0.1:4343")
    store.release.set()
    await refresh
    assert roster.peek(ws.id).agent_url == "http://127.0.0.1:4343"  # type: ignore[union-attr]
    assert roster.peek(other.id) is not None


async def test_a_refresh_does_not_revive_a_workspace_dropped_while_it_read() -> None:
    store, roster, ws = await _setup()
    refresh = asyncio.ensure_future(roster.refresh(ws.id))
    await asyncio.sleep(0)
    roster.drop(ws.id)
    await store.delete_workspace(ws.id)
    store.release.set()
    await refresh
    assert roster.peek(ws.id) is None


async def test_a_refresh_with_no_write_meanwhile_takes_the_store_s_record() -> None:
    store, roster, ws = await _setup()
    await store.update_workspace(ws.id, agent_url="http://127.0.0.1:4444")  # elsewhere
    store.release.set()
    await roster.refresh(ws.id)
    assert roster.peek(ws.id).agent_url == "http://127.0.0.1:4444"  # type: ignore[union-attr]


async def test_a_heartbeat_s_time_does_not_hold_a_refresh_back() -> None:
    """A beat moves only the time in memory (no write of the record): a refresh under way
    still brings in what another replica wrote."""
    store, roster, ws = await _setup()
    await store.update_workspace(ws.id, agent_url="http://127.0.0.1:4545")  # elsewhere
    refresh = asyncio.ensure_future(roster.refresh(ws.id))
    await asyncio.sleep(0)
    known = roster.peek(ws.id)
    assert known is not None
    roster.put(replace(known, last_heartbeat=123.0), stamp=False)
    store.release.set()
    await refresh
    assert roster.peek(ws.id).agent_url == "http://127.0.0.1:4545"  # type: ignore[union-attr]
    assert store.reads == 1


async def test_get_does_not_revive_a_workspace_dropped_while_it_read() -> None:
    store = SlowReads()
    ws = make_ws("r3")
    await store.create_workspace(ws)
    roster = Roster(store)  # not known here yet: get reads the store
    got = asyncio.ensure_future(roster.get(ws.id))
    await asyncio.sleep(0)
    roster.drop(ws.id)  # removed here meanwhile
    store.release.set()
    with pytest.raises(NotFound):
        await got
    assert roster.peek(ws.id) is None and roster._dropped == {}  # forgotten after the read


async def test_a_read_by_other_means_keeps_what_was_put_or_dropped_meanwhile() -> None:
    """`read` (a lookup by run token, say) puts what it found unless this replica put or
    dropped that workspace while it read: then what the roster holds wins."""
    for meanwhile in ("put", "drop", "nothing"):
        store = SlowReads()
        ws = make_ws("r4")
        await store.create_workspace(ws)
        roster = Roster(store)
        newer = replace(ws, agent_url="http://127.0.0.1:4646")
        got = asyncio.ensure_future(roster.read(lambda s=store, i=ws.id: s.get_workspace(i)))
        await asyncio.sleep(0)  # the read has the stored record
        if meanwhile == "put":
            roster.put(newer)
        elif meanwhile == "drop":
            roster.drop(ws.id)
        store.release.set()
        found = await got
        want = {"put": newer, "drop": None, "nothing": ws}[meanwhile]
        assert found == want and roster.peek(ws.id) == want, meanwhile


class Versioned(MemoryStore):
    """A store that keeps a version of each row, bumped by every write (as PostgreSQL's
    xmin), and counts the rows a refresh reads. `hold`: the next refresh's reads wait for
    `release` and then read (the value at their end)."""

    def __init__(self) -> None:
        super().__init__()
        self.version: dict[str, int] = {}
        self.rows_read = 0
        self.hold = False
        self.release = asyncio.Event()

    def _bump(self, ws_id: str) -> None:
        self.version[ws_id] = self.version.get(ws_id, 0) + 1

    async def create_workspace(self, ws: Workspace) -> None:
        await super().create_workspace(ws)
        self._bump(ws.id)

    async def update_workspace(self, ws_id: str, **fields: Any) -> Workspace:
        got = await super().update_workspace(ws_id, **fields)
        self._bump(ws_id)
        return got

    async def changed_workspaces(
        self, seen: Any
    ) -> tuple[dict[str, str], list[tuple[Workspace, str]]] | None:
        if self.hold:
            self.hold = False
            await self.release.wait()
        versions = {i: str(v) for i, v in self.version.items()}
        stale = [i for i, v in versions.items() if seen.get(i) != v]
        self.rows_read += len(stale)
        return versions, [(await self.get_workspace(i), versions[i]) for i in stale]


async def test_a_refresh_reads_only_the_workspaces_whose_row_changed() -> None:
    store = Versioned()
    a, b, c = make_ws("v1"), make_ws("v2"), make_ws("v3")
    for ws in (a, b, c):
        await store.create_workspace(ws)
    roster = Roster(store)
    await roster.refresh()
    assert store.rows_read == 3 and len(roster) == 3
    await roster.refresh()
    assert store.rows_read == 3  # nothing changed: nothing read
    await store.update_workspace(b.id, agent_url="http://127.0.0.1:4545")  # another replica
    await roster.refresh()
    assert store.rows_read == 4
    assert roster.peek(b.id).agent_url == "http://127.0.0.1:4545"  # type: ignore[union-attr]
    await _write(store, roster, c.id, agent_url="http://127.0.0.1:4646")  # a write here
    await store.delete_workspace(a.id)
    store.version.pop(a.id)
    await roster.refresh()
    assert store.rows_read == 5  # the row written here is read again (it matches: kept)
    assert roster.peek(a.id) is None and len(roster) == 2


async def test_a_row_skipped_for_a_write_here_is_read_again_by_the_next_refresh() -> None:
    """A refresh whose read began before a write here reads, at its end, a newer row still
    (another replica wrote after this one): it keeps what was put here, and must not mark
    that newer row as seen, or no later refresh would read it and the roster would keep
    the older record for good."""
    store = Versioned()
    ws = make_ws("v1")
    await store.create_workspace(ws)
    roster = Roster(store)
    await roster.refresh()
    store.hold = True
    refresh = asyncio.ensure_future(roster.refresh())
    await asyncio.sleep(0)
    await _write(store, roster, ws.id, agent_url="http://127.0.0.1:4747")  # here
    await store.update_workspace(ws.id, agent_url="http://127.0.0.1:4848")  # elsewhere, after
    store.release.set()
    await refresh
    assert roster.peek(ws.id).agent_url == "http://127.0.0.1:4747"  # type: ignore[union-attr]
    await roster.refresh()
    assert roster.peek(ws.id).agent_url == "http://127.0.0.1:4848"  # type: ignore[union-attr]


class VersionedSlow(Versioned):
    """Heartbeat flushes write the row (a new version), and one armed single read waits."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = asyncio.Event()
        self.armed = False

    async def record_heartbeats(self, beats: dict[str, float]) -> None:
        await super().record_heartbeats(beats)
        for i in beats:
            self._bump(i)

    async def get_workspace(self, ref: str) -> Workspace:
        got = await super().get_workspace(ref)
        if self.armed:
            self.armed = False
            await self.slow.wait()
        return got


async def test_an_overlapping_full_refresh_does_not_mark_seen_a_row_put_here_meanwhile() -> None:
    """A single read from before a heartbeat's flush puts the older record while a full
    refresh runs; that refresh must not mark the row seen again (found by a review)."""
    store = VersionedSlow()
    ws = make_ws("o1", last_heartbeat=T0)
    await store.create_workspace(ws)
    roster = Roster(store)
    await roster.refresh()
    store.armed = True
    single = asyncio.ensure_future(roster.refresh(ws.id))
    await asyncio.sleep(0)  # it holds the record with the heartbeat of T0
    roster.put(replace(roster.peek(ws.id), last_heartbeat=T0 + 5), stamp=False)  # type: ignore[type-var]
    await store.record_heartbeats({ws.id: T0 + 5})
    await roster.refresh()  # equal to what is held: marks the new version
    store.hold = True
    full = asyncio.ensure_future(roster.refresh())
    await asyncio.sleep(0)
    store.slow.set()
    await single  # puts the older record
    store.release.set()
    await full
    await roster.refresh()
    assert roster.peek(ws.id).last_heartbeat == T0 + 5  # type: ignore[union-attr]


async def test_a_full_refresh_mends_a_record_the_store_never_got() -> None:
    """A versioned refresh reads only rows that changed; housekeeping's full one compares
    every row, so a record changed here without a write (a failed write after changing
    it in place) is mended within a pass."""
    from berth.domain.deploy import Instance, Role

    store = Versioned()
    ws = make_ws("p1", peer=Instance(2, Role.NEXT, "rt2", agent_url="http://127.0.0.1:1"))
    await store.create_workspace(ws)
    roster = Roster(store)
    await roster.refresh()
    (await roster.get(ws.id)).peer.canary = 50  # type: ignore[union-attr]
    await roster.refresh(full=True)
    assert roster.peek(ws.id).peer.canary is None  # type: ignore[union-attr]


@pytest.mark.parametrize("full", [False, True])
async def test_a_refresh_never_takes_a_workspace_s_last_beat_back(
    tmp_path: Path, full: bool
) -> None:
    """The row keeps only the beat written with it (beats are stored apart): a refresh of
    one workspace (a replica's notice) or of all (housekeeping) keeps the later beat the
    roster holds (found by a review)."""
    store = SqliteStore(str(tmp_path / "b.db"))
    await store.migrate()
    try:
        roster = Roster(store)
        beats = Heartbeats(store, roster, seconds=2, rate=100, timeout=10)
        ws = make_ws("a", last_heartbeat=T0)  # as registered at T0
        await store.create_workspace(ws)
        await roster.refresh()
        beats.beat(ws.id, T0 + 3600)  # an hour of beats later
        await beats.flush()
        await roster.refresh(full=True) if full else await roster.refresh(ws.id)
        assert roster.peek(ws.id).last_heartbeat == T0 + 3600  # type: ignore[union-attr]
        await store.update_workspace(ws.id, last_heartbeat=T0 + 7200)  # a later probe's
        await roster.refresh(full=True) if full else await roster.refresh(ws.id)
        assert roster.peek(ws.id).last_heartbeat == T0 + 7200  # type: ignore[union-attr]
    finally:
        await store.close()
