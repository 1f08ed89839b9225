"""This replica's view of every workspace, so the hot path does not read the database.

Whoever changes a workspace in the store puts the new record here (`put`); changes made by
other replicas arrive as WS_TOPIC notifications and a periodic refresh.

A refresh reads the store while this replica may be writing the same workspace: a read
that began before a write committed can come back after that write's record was put, and
must not replace it (a restart's new agent URL was lost that way, and its agent never came
online: the CI hang of stop 19). So each put and drop is stamped with a generation, and a
read whose workspace was put or dropped while it ran is not applied: a refresh reads again
(a few times; a workspace written that often is refreshed by the notices of those writes
anyway), `get` answers with what was put (or NotFound, if it was dropped). A heartbeat's
time is not a write of the record (`put(..., stamp=False)`): a beat never holds a refresh
back. Drops are remembered only while a read is under way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace

from berth.domain.errors import NotFound
from berth.domain.workspace import Workspace
from berth.ports import Store

log = logging.getLogger("berth.roster")
__all__ = ["Roster"]
REFRESH_TRIES = 3


class Roster:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._by_id: dict[str, Workspace] = {}
        self._names: dict[str, str] = {}
        self._tokens: dict[str, str] = {}  # token hash and run token hash -> ws id
        self._changed: dict[str, asyncio.Condition] = {}
        self._listeners: list[Callable[[Workspace], None]] = []
        # staleness of reads: the generation of each held workspace's last put, and of the
        # drops made while a read was under way (forgotten when no read is)
        self._gen = 0
        self._stamps: dict[str, int] = {}
        self._dropped: dict[str, int] = {}
        self._reading = 0
        # the store's row version of each held workspace as of the refresh that last read
        # or matched it (stores that keep versions): a refresh reads only the others
        self._versions: dict[str, str] = {}

    def on_change(self, fn: Callable[[Workspace], None]) -> None:
        self._listeners.append(fn)

    def peek(self, ws_id: str) -> Workspace | None:
        return self._by_id.get(ws_id)

    def name_of(self, ws_id: str) -> str:
        """A workspace's name if this replica knows it, else its id (for labels and logs)."""
        ws = self._by_id.get(ws_id)
        return ws.name if ws is not None else ws_id

    def all(self) -> list[Workspace]:
        return list(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def by_token(self, token_hash: str) -> Workspace | None:
        """The workspace whose token or current run token (or its deploy peer's) hashes to
        `token_hash`, if known."""
        ws = self._by_id.get(self._tokens.get(token_hash, ""))
        if ws is None or token_hash not in (
            ws.token_hash,
            ws.run_token_hash,
            ws.peer_run_token_hash,
        ):
            return None
        return ws

    async def get(self, ref: str) -> Workspace:
        ws_id = ref if ref in self._by_id else self._names.get(ref)
        if ws_id is not None:
            return self._by_id[ws_id]
        ws = await self.read(lambda: self._store.get_workspace(ref))
        if ws is None:  # dropped here while it was read
            raise NotFound(f"no workspace {ref!r}", code="workspace_not_found")
        return ws

    async def read(self, fetch: Callable[[], Awaitable[Workspace | None]]) -> Workspace | None:
        """A workspace this replica does not hold, read from the store (`fetch`), put here;
        unless this replica put or dropped it while the read ran: then what it holds now
        (None if dropped)."""
        with self._reading_from() as gen:
            ws = await fetch()
            if ws is None:
                return None
            if self._moved_since(ws.id, gen):
                return self._by_id.get(ws.id)
            self.put(ws)
            return ws

    def put(self, ws: Workspace, *, stamp: bool = True) -> None:
        """The record as it now is. `stamp=False`: only a heartbeat's time moved (not a
        write of the record: a refresh under way still applies)."""
        old = self._by_id.get(ws.id)
        if old is not None:
            if old.name != ws.name:
                self._names.pop(old.name, None)
            self._forget_tokens(old)
        self._by_id[ws.id] = ws
        if stamp or ws.id not in self._stamps:
            self._gen += 1
            self._stamps[ws.id] = self._gen
            self._versions.pop(ws.id, None)  # a write here: the next refresh reads it again
        self._names[ws.name] = ws.id
        for h in (ws.token_hash, ws.run_token_hash, ws.peer_run_token_hash):
            if h:
                self._tokens[h] = ws.id
        cond = self._changed.get(ws.id)
        if cond is not None:
            asyncio.ensure_future(_notify(cond))
        for fn in self._listeners:
            fn(ws)

    def drop(self, ws_id: str) -> None:
        self._gen += 1
        self._stamps.pop(ws_id, None)
        self._versions.pop(ws_id, None)
        if self._reading:  # a read under way must not bring it back
            self._dropped[ws_id] = self._gen
        ws = self._by_id.pop(ws_id, None)
        if ws is not None:
            self._names.pop(ws.name, None)
            self._forget_tokens(ws)

    def _forget_tokens(self, ws: Workspace) -> None:
        for h in (ws.token_hash, ws.run_token_hash, ws.peer_run_token_hash):
            if h and self._tokens.get(h) == ws.id:
                del self._tokens[h]

    @contextlib.contextmanager
    def _reading_from(self) -> Iterator[int]:
        """A read of the store under way; yields the generation it started at."""
        self._reading += 1
        try:
            yield self._gen
        finally:
            self._reading -= 1
            if not self._reading:
                self._dropped.clear()

    def _moved_since(self, ws_id: str, gen: int) -> bool:
        """Was the workspace put or dropped here after generation `gen`?"""
        return self._stamps.get(ws_id, -1) > gen or self._dropped.get(ws_id, -1) > gen

    async def refresh(self, ws_id: str | None = None, *, full: bool = False) -> None:
        """Read one workspace (or all) from the store again. What this replica put or
        dropped while the read was under way is kept: the read may predate it.

        All of them: only the rows whose version this replica has not seen, where the store
        keeps versions; `full`, every row (housekeeping: whatever made the roster differ
        from an unchanged row is mended there, within a pass)."""
        if ws_id is None:
            with self._reading_from() as gen:
                seen = {} if full else {i: v for i, v in self._versions.items() if i in self._by_id}
                got = await self._store.changed_workspaces(seen)
                if got is None:
                    current = await self._store.list_workspaces()
                    ids = {w.id for w in current}
                    changed: list[tuple[Workspace, str | None]] = [(w, None) for w in current]
                else:
                    versions, fresh = got
                    changed = list(fresh)
                    ids = set(versions)
                    # still as seen, and not put or dropped here meanwhile (that unmarks it)
                    seen = {
                        i: v
                        for i, v in seen.items()
                        if versions.get(i) == v and not self._moved_since(i, gen)
                    }
                for gone in set(self._by_id) - ids:
                    if not self._moved_since(gone, gen):
                        self.drop(gone)
                for w, version in changed:
                    if self._moved_since(w.id, gen):
                        continue  # its version is not marked seen: the next refresh reads it
                    w = self._with_later_beat(w)
                    if self._by_id.get(w.id) != w:
                        self.put(w)
                    if version is not None:
                        seen[w.id] = version
                self._versions = seen
            return
        for _ in range(REFRESH_TRIES):
            with self._reading_from() as gen:
                ws = await self._stored(ws_id)
                if not self._moved_since(ws_id, gen):  # else: this read may predate a write
                    if ws is None:
                        self.drop(ws_id)
                    else:
                        self.put(self._with_later_beat(ws))
                    return
            log.debug("refresh of %s: written here while it read; reading again", ws_id)
        log.info("refresh of %s skipped: written here during each of its reads", ws_id)

    def _with_later_beat(self, ws: Workspace) -> Workspace:
        """The record read, with the later beat of the one held: a workspace's row keeps
        only the beat written with it (beats are stored apart, services/heartbeats.py),
        so a refresh must not take a workspace's last beat back in time."""
        held = self._by_id.get(ws.id)
        if held is None or held.last_heartbeat is None:
            return ws
        if ws.last_heartbeat is None or ws.last_heartbeat < held.last_heartbeat:
            return replace(ws, last_heartbeat=held.last_heartbeat)
        return ws

    async def _stored(self, ws_id: str) -> Workspace | None:
        try:
            return await self._store.get_workspace(ws_id)
        except NotFound:
            return None

    async def wait_for(
        self, ws_id: str, pred: Callable[[Workspace | None], bool], timeout: float
    ) -> bool:
        """Wait until `pred(workspace)` holds; False if `timeout` passes first."""
        cond = self._changed.setdefault(ws_id, asyncio.Condition())
        try:
            async with cond:
                await asyncio.wait_for(cond.wait_for(lambda: pred(self._by_id.get(ws_id))), timeout)
            return True
        except TimeoutError:
            return pred(self._by_id.get(ws_id))


async def _notify(cond: asyncio.Condition) -> None:
    async with cond:
        cond.notify_all()
