"""The fast lane's feed: one JSON object per line on its standard output, each written
after the COMMIT it reports (docs/fast-lane.md). Applying a line does for a delivery the
lane accepted or settled what the delivery log does for Python's own: metrics, flow
events, idle suspend's activity, the dispatcher's view of what is in flight, waiters."""

from __future__ import annotations

import logging
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
    """Applies the lane's feed lines. It runs per message at thousands a second: it builds
    no Delivery and reads nothing unless someone on this replica waits for the answer."""

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
        """One line; a malformed one is logged and skipped (the feed goes on)."""
        try:
            ev = orjson.loads(line)
            kind = ev.get("e") if isinstance(ev, dict) else None
            if kind == "f":
                self._forwarding(ev)
            elif kind == "d":
                await self._done(ev)
            elif kind == "ready":
                self._metrics.set_value("berth_lane_up", 1.0)
                self.on_ready()
            elif isinstance(kind, str):
                log.debug("fast lane: an event berth does not know: %r", line[:200])
            else:
                raise ValueError("not an event")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            log.warning("fast lane: a malformed feed line (%s): %r", e, line[:200])
        except Exception:  # a bug, or the store away for a waiter's read: never the reader
            log.exception("fast lane: applying a feed line failed: %r", line[:200])

    def _forwarding(self, ev: dict[str, Any]) -> None:
        """Accepted in flight, and being forwarded: DeliveryLog.accept + claim's outcome."""
        did, ws_id, mid = _str(ev, "id"), _str(ev, "ws"), _str(ev, "mid")
        name = self._name_of(ws_id)
        self._dispatcher.lane.started(ws_id, did)
        self._metrics.inc("berth_deliveries_accepted_total", workspace=name)
        self._events.flow("delivery.accepted", delivery_id=did, workspace_id=ws_id, message_id=mid)
        self._events.flow(
            "delivery.forwarded", delivery_id=did, workspace_id=ws_id, message_id=mid, forward=1
        )
        self._log.active(ws_id)
        self._metrics.observe("berth_queue_wait_seconds", 0.0, workspace=name)

    async def _done(self, ev: dict[str, Any]) -> None:
        """Settled done: a forward's end and DeliveryLog._finished's outcome."""
        did, ws_id, mid = _str(ev, "id"), _str(ev, "ws"), _str(ev, "mid")
        took = float(ev["finished"]) - float(ev["created"])
        forward = float(ev["fwd"])
        name = self._name_of(ws_id)
        self._dispatcher.lane.ended(did)
        self._metrics.observe("berth_forward_seconds", forward, workspace=name)
        self._metrics.inc("berth_deliveries_total", workspace=name, outcome="done")
        self._metrics.inc("berth_lane_deliveries_total", workspace=name)
        self._metrics.observe(
            "berth_delivery_seconds", took, workspace=name, exemplar={"delivery_id": did}
        )
        self._events.flow("delivery.done", delivery_id=did, workspace_id=ws_id, message_id=mid)
        if self._log.waiting(did):
            self._log.resolve(await self._log.get(did))


def _str(ev: dict[str, Any], key: str) -> str:
    v = ev[key]
    if not isinstance(v, str) or not v:
        raise ValueError(f"{key} must be a non-empty string")
    return v
