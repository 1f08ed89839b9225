"""Lifecycle events, fanned out to every replica through the Bus (`GET /v1/events`)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from berth.ports import Bus

log = logging.getLogger("berth.events")
__all__ = ["BATCH_TOPIC", "DONE_TOPIC", "EVENT_TOPIC", "WORK_TOPIC", "WS_TOPIC", "Events", "unpack"]

EVENT_TOPIC = "event."  # event.<kind>; subscribe to "event.*" for all
DONE_TOPIC = "delivery.final"  # {id, workspace_id}: wakes callers waiting on any replica
WORK_TOPIC = "work"  # {workspace_id}: new or returned work; wakes dispatchers on any replica
WS_TOPIC = "workspace.changed"  # {workspace_id}: state changed; replicas refresh their view


BATCH_TOPIC = EVENT_TOPIC + "batch"  # {"events": [{kind, at, replica, ...}, ...]}
FLOW_FLUSH = 0.1  # seconds between flushes of message-flow events
FLOW_MAX = 10_000  # buffered flow events past this are dropped (counted), never block


class Events:
    """Lifecycle events (`emit`: published at once) and message-flow events (`flow`:
    accepted, forwarded, done; buffered and published in one bus message every
    FLOW_FLUSH seconds, so following messages live costs the hot path nothing)."""

    def __init__(self, bus: Bus, replica: str) -> None:
        self.bus = bus
        self.replica = replica
        self._flow: list[dict[str, Any]] = []
        self.dropped = 0

    def flow(self, kind: str, **data: Any) -> None:
        if len(self._flow) >= FLOW_MAX:
            self.dropped += 1
            return
        self._flow.append(self.flow_event(kind, time.time(), **data))

    def flow_event(self, kind: str, at: float, **data: Any) -> dict[str, Any]:
        """A flow event as `flow` buffers it, for `flows`."""
        return {"kind": kind, "at": at, "replica": self.replica, **data}

    def flows(self, events: list[dict[str, Any]]) -> None:
        """Many flow events at once, each made by `flow_event` (the fast lane's feed, a
        batch of lines at a time)."""
        room = FLOW_MAX - len(self._flow)
        if room < len(events):
            self.dropped += len(events) - max(room, 0)
            events = events[: max(room, 0)]
        self._flow.extend(events)

    async def pump(self) -> None:
        """Publish buffered flow events (a background loop)."""
        while True:
            await asyncio.sleep(FLOW_FLUSH)
            await self.flush()

    async def flush(self) -> None:
        if not self._flow:
            return
        batch, self._flow = self._flow, []
        try:
            await self.bus.publish(BATCH_TOPIC, {"events": batch})
        except Exception:  # events are best-effort; state lives in the store
            log.warning("could not publish %d flow events", len(batch), exc_info=True)

    async def emit(self, kind: str, **data: Any) -> None:
        payload = {"kind": kind, "at": time.time(), "replica": self.replica, **data}
        try:
            await self.bus.publish(EVENT_TOPIC + kind, payload)
        except Exception:  # events are best-effort; state lives in the store
            log.warning("could not publish event %s", kind, exc_info=True)

    async def signal(self, topic: str, **data: Any) -> None:
        try:
            await self.bus.publish(topic, data)
        except Exception:
            log.warning("could not publish %s", topic, exc_info=True)


def unpack(topic: str, payload: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, payload) of every event a bus message carries: one, or a flow batch."""
    if topic == BATCH_TOPIC:
        return [(str(e.get("kind")), e) for e in payload.get("events") or []]
    return [(topic[len(EVENT_TOPIC) :], payload)]
