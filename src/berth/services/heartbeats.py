"""Heartbeats at a rate that scales with the number of workspaces, kept in memory.

berth asks each agent to beat every `interval()` seconds: `heartbeat_seconds`, or longer
when there are more workspaces than `heartbeat_rate` beats per second can cover, so
the beats of all agents together stay within that rate (docs/operations.md). A workspace
is silent once no beat came for `timeout_for` it: `heartbeat_timeout`, or three times the
interval it was last told, whichever is longer.

A beat only updates this replica's roster; `flush` writes the beats received since the
last flush in one statement, which is what other replicas (and berth after a restart) see.
"""

from __future__ import annotations

from dataclasses import replace

from berth.ports import WorkspaceStore
from berth.services.roster import Roster

__all__ = ["Heartbeats"]

MISSED = 3  # beats in a row a workspace may miss before it counts as silent


class Heartbeats:
    def __init__(
        self,
        store: WorkspaceStore,
        roster: Roster,
        *,
        seconds: float,
        rate: float,
        timeout: float,
    ) -> None:
        self._store, self._roster = store, roster
        self._seconds, self._rate, self._timeout = seconds, rate, timeout
        self._told: dict[str, float] = {}  # ws id -> the interval it was last asked for
        self._dirty: dict[str, float] = {}  # ws id -> latest beat not yet in the store

    def interval(self) -> float:
        """The interval to ask of an agent now."""
        return max(self._seconds, len(self._roster) / self._rate)

    def told(self, ws_id: str) -> float:
        """Tell the workspace's agent the interval (registration, each beat); returns it."""
        self._told[ws_id] = seconds = self.interval()
        return seconds

    def timeout_for(self, ws_id: str) -> float:
        told = self._told.get(ws_id)
        return max(self._timeout, MISSED * (self.interval() if told is None else told))

    def beat(self, ws_id: str, at: float) -> None:
        """A beat of the workspace's agent at `at`: into the roster, the store at the flush."""
        ws = self._roster.peek(ws_id)
        if ws is None:
            return
        self._roster.put(replace(ws, last_heartbeat=at), stamp=False)  # not a write of it
        self._dirty[ws_id] = at

    async def flush(self) -> None:
        """Write the beats received since the last flush (one statement for all)."""
        if not self._dirty:
            return
        beats, self._dirty = self._dirty, {}
        try:
            await self._store.record_heartbeats(beats)
        except BaseException:
            for ws_id, at in beats.items():  # kept for the next flush
                self._dirty[ws_id] = max(at, self._dirty.get(ws_id, at))
            raise

    async def stored(self) -> dict[str, float]:
        """The last beat of each workspace as the store has it (beats other replicas took),
        also put into the roster's records where it is later than theirs: the store keeps
        beats apart from the workspaces' rows, so a refresh no longer brings them, and
        every replica's lists show the last beat whichever replica took it."""
        stored = await self._store.last_heartbeats()
        for ws_id, at in stored.items():
            ws = self._roster.peek(ws_id)
            if ws is not None and (ws.last_heartbeat or 0.0) < at:
                self._roster.put(replace(ws, last_heartbeat=at), stamp=False)
        return stored
