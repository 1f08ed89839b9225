"""The fast lane's feed: one JSON object per line on its standard output, each written
after the COMMIT it reports (docs/fast-lane.md). Applying a line does for a delivery the
lane accepted or settled what the delivery log does for Python's own: metrics, flow
events, idle suspend's activity, the dispatcher's view of what is in flight, waiters."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from berth.metrics import Metrics
from berth.services.delivery_log import DeliveryLog
from berth.services.dispatcher import Dispatcher
from berth.services.events import Events

log = logging.getLogger("berth.lane")
__all__ = ["LaneFeed"]


class LaneFeed:
    """Applies the lane's feed lines. It runs per message at thousands a second, a batch of
    lines (what one read of the lane's output brought) at a time: it builds no Delivery,
    counts and observes per workspace once per batch, and reads nothing unless someone on
    this replica waits for the answer (docs/benchmarks.md: line by line, this was ~35 µs of
    berth's Python per message the lane served)."""

    def __init__(
        self,
        deliveries: DeliveryLog,
        dispatcher: Dispatcher,
        events: Events,
        metrics: Metrics,
        name_of: Callable[[str], str],
    ) -> None:
        self._log, self._dispatcher = deliveries, dispatcher
        self._events, self._metrics, self._name_of = events, metrics, name_of
        self.on_ready: Callable[[], None] = lambda: None

    async def apply(self, line: bytes) -> None:
        """One line (see apply_many)."""
        await self.apply_many([line])

    async def apply_many(self, lines: list[bytes]) -> None:
        """Lines in the order the lane wrote them; a malformed one is logged and skipped
        (the feed goes on)."""
        batch = _Batch()
        for line in lines:
            try:
                ev = orjson.loads(line)
                kind = ev.get("e") if isinstance(ev, dict) else None
                if kind == "f":
                    self._forwarding(ev, batch)
                elif kind == "d":
                    self._done(ev, batch)
                elif kind == "ready":
                    self._metrics.set_value("berth_lane_up", 1.0)
                    self.on_ready()
                elif isinstance(kind, str):
                    log.debug("fast lane: an event berth does not know: %r", line[:200])
                else:
                    raise ValueError("not an event")
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                log.warning("fast lane: a malformed feed line (%s): %r", e, line[:200])
            except Exception:  # a bug: never the reader
                log.exception("fast lane: applying a feed line failed: %r", line[:200])
        try:
            await self._flush(batch)
        except Exception:  # a bug, or the store away for a waiter's read: never the reader
            log.exception("fast lane: applying %d feed lines failed", len(lines))

    def _forwarding(self, ev: dict[str, Any], b: _Batch) -> None:
        """Accepted in flight, and being forwarded: DeliveryLog.accept + claim's outcome."""
        did, ws_id, mid = _str(ev, "id"), _str(ev, "ws"), _str(ev, "mid")
        self._dispatcher.lane.started(ws_id, did)
        b.accepted[ws_id] = b.accepted.get(ws_id, 0) + 1
        flow = self._events.flow_event
        ids = {"delivery_id": did, "workspace_id": ws_id, "message_id": mid}
        b.flows.append(flow("delivery.accepted", b.at, **ids))
        b.flows.append(flow("delivery.forwarded", b.at, **ids, forward=1))

    def _done(self, ev: dict[str, Any], b: _Batch) -> None:
        """Settled done: a forward's end and DeliveryLog._finished's outcome."""
        did, ws_id, mid = _str(ev, "id"), _str(ev, "ws"), _str(ev, "mid")
        took = float(ev["finished"]) - float(ev["created"])
        forward = float(ev["fwd"])
        self._dispatcher.lane.ended(did)
        done = b.done.get(ws_id)
        if done is None:
            done = b.done[ws_id] = ([], [])
        done[0].append(forward)
        done[1].append(took)
        b.took.append((took, did))
        b.flows.append(
            self._events.flow_event(
                "delivery.done", b.at, delivery_id=did, workspace_id=ws_id, message_id=mid
            )
        )
        if self._log.waiting(did):
            b.waited.append(did)

    async def _flush(self, b: _Batch) -> None:
        """What the batch's lines add up to: counts, durations, flows, waiters; a failure
        of one part leaves the others done (and one waiter's read, the others woken)."""
        try:
            self._count(b)
        except Exception:  # a bug: the flows and waiters still go
            log.exception("fast lane: counting %d feed lines failed", len(b.flows))
        if b.flows:
            self._events.flows(b.flows)
        for did in b.waited:
            try:
                self._log.resolve(await self._log.get(did))
            except Exception as e:  # the store away: its waiter polls the log itself
                log.warning("fast lane: could not read %s for its waiter (%r)", did, e)

    def _count(self, b: _Batch) -> None:
        m = self._metrics
        for ws_id, n in b.accepted.items():
            name = self._name_of(ws_id)
            m.inc("berth_deliveries_accepted_total", n, workspace=name)
            m.observe_many("berth_queue_wait_seconds", name, [0.0] * n)
            self._log.active(ws_id)
        for ws_id, (forward, took) in b.done.items():
            name = self._name_of(ws_id)
            m.observe_many("berth_forward_seconds", name, forward)
            m.inc("berth_deliveries_total", len(took), workspace=name, outcome="done")
            m.inc("berth_lane_deliveries_total", len(took), workspace=name)
            m.observe_many("berth_delivery_seconds", name, took)
        m.exemplars("berth_delivery_seconds", b.took)  # in the lane's order, across workspaces


class _Batch:
    """What a batch of feed lines adds up to, applied once (LaneFeed._flush)."""

    __slots__ = ("accepted", "at", "done", "flows", "took", "waited")

    def __init__(self) -> None:
        self.at = time.time()
        self.accepted: dict[str, int] = {}  # ws -> accepted in flight
        # ws -> (forward seconds, delivery seconds), a value per message
        self.done: dict[str, tuple[list[float], list[float]]] = {}
        self.took: list[tuple[float, str]] = []  # (delivery seconds, id), in the lane's order
        self.flows: list[dict[str, Any]] = []
        self.waited: list[str] = []  # done, and someone on this replica waits for it


def _str(ev: dict[str, Any], key: str) -> str:
    v = ev[key]
    if not isinstance(v, str) or not v:
        raise ValueError(f"{key} must be a non-empty string")
    return v
