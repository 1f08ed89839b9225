"""The fast lane's forwards as this replica knows them (docs/fast-lane.md).

The lane forwards plain sends itself; the dispatcher counts them with its own: a workspace
is busy, and a restart's drain waits, while either forwards to it. This replica learns of
them from the lane's feed (`started`, `ended`), which comes up to 10 ms after the lane's
COMMIT, and from the store (`sync`), which a drain reads so that it never misses a forward
the lane runs now.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from berth.services.delivery_log import DeliveryLog

log = logging.getLogger("berth.dispatcher")
__all__ = ["LaneForwards"]

GONE_MAX = 1024  # hand-offs remembered until their feed line comes (see ended)
OVER_MAX = 4096  # forwards remembered as over, for sync's store reads


class LaneForwards:
    def __init__(
        self,
        deliveries: DeliveryLog,
        *,
        freed: Callable[[str], None],
        idle: Callable[[str], None],
    ) -> None:
        """`freed(ws_id)`: a forward to the workspace ended (its slot is free); `idle(ws_id)`:
        the lane forwards nothing more to it."""
        self._log, self._freed, self._idle = deliveries, freed, idle
        self._by_ws: dict[str, dict[str, None]] = {}  # ws -> delivery ids, and back
        self._ws_of: dict[str, str] = {}
        # ended before the feed said they started (a hand-off can overtake its feed line);
        # ordered dicts: the oldest goes in O(1) (a dict's first key, after many deletions
        # at its front, is a scan over their holes: 2 µs a message, against 0.2)
        self._gone: OrderedDict[str, None] = OrderedDict()
        # the most recent ends, so that a read of the store never revives one
        self._over: OrderedDict[str, None] = OrderedDict()
        self._runs = 0  # forget calls: a read from before one is stale
        # the lane's lease owner while it is on (set by berth.lane.Lane): sync reads its
        # forwards from the store
        self.owner: str | None = None

    def ids(self, ws_id: str) -> list[str]:
        return list(self._by_ws.get(ws_id, {}))

    def busy(self, ws_id: str) -> int:
        return len(self._by_ws.get(ws_id, {}))

    def started(self, ws_id: str, delivery_id: str) -> None:
        """The lane accepted a delivery and forwards it: in flight here, as ours."""
        if delivery_id in self._gone:
            del self._gone[delivery_id]
            return
        if delivery_id in self._over:
            return  # a drain's read of the store knew it first, and it has ended since
        self._by_ws.setdefault(ws_id, {})[delivery_id] = None
        self._ws_of[delivery_id] = ws_id

    def ended(self, delivery_id: str) -> None:
        """The lane's forward of the delivery is over (settled, or handed to Python): its
        slot is free, which a message queued behind it may be waiting for."""
        self._over[delivery_id] = None
        if len(self._over) > OVER_MAX:
            self._over.popitem(last=False)
        ws_id = self._ws_of.pop(delivery_id, None)
        if ws_id is None:
            self._gone[delivery_id] = None
            if len(self._gone) > GONE_MAX:
                self._gone.popitem(last=False)
            return
        flights = self._by_ws.get(ws_id, {})
        flights.pop(delivery_id, None)
        if not flights:
            self._by_ws.pop(ws_id, None)
            self._idle(ws_id)
        self._freed(ws_id)

    def forget(self) -> None:
        """The lane exited: none of its forwards runs any more."""
        self._runs += 1
        gone = list(self._by_ws)
        self._by_ws.clear()
        self._ws_of.clear()
        self._gone.clear()
        self._over.clear()
        for ws_id in gone:
            self._idle(ws_id)

    def lost(self, delivery_ids: list[str]) -> None:
        """These deliveries went back to the queue (a lease that ran out, a restart's
        requeue): those that were the lane's forwards are over."""
        for i in delivery_ids:
            if i in self._ws_of:
                self.ended(i)

    async def sync(self, ws_id: str) -> None:
        """Learn the lane's forwards to the workspace from the store, not only from its
        feed: a restart's drain must wait for a forward the lane runs now. Every lane
        forward is a row in flight under the lane's lease, and the lane accepts only to a
        workspace that is online (its INSERT's guard, atomic with berth's writes): once the
        workspace's move out of online is committed, the read holds every forward that can
        exist. Known forwards the store no longer shows as the lane's are over. The store
        away: logged, and the feed's view is all there is."""
        owner = self.owner
        if owner is None:
            return
        runs = self._runs
        known = set(self._by_ws.get(ws_id, {}))  # their feed lines came: on disk before this read
        try:
            leased = await self._log.leased(ws_id, owner)
        except Exception:
            log.warning("could not read the fast lane's forwards to %s", ws_id, exc_info=True)
            return
        if runs != self._runs:
            return  # the lane exited during the read: forget said all there is
        now = [i for i in leased if i not in self._over]  # ended during the read
        self.lost(sorted(known - set(now)))  # settled, handed off, requeued: late news
        for i in now:
            if i not in self._ws_of and i not in self._gone:
                self._by_ws.setdefault(ws_id, {})[i] = None
                self._ws_of[i] = ws_id
