"""Lifecycle events, fanned out to every replica through the Bus (`GET /v1/events`)."""

from __future__ import annotations

import logging
import time
from typing import Any

from berth.ports import Bus

log = logging.getLogger("berth.events")
__all__ = ["DONE_TOPIC", "EVENT_TOPIC", "WORK_TOPIC", "WS_TOPIC", "Events"]

EVENT_TOPIC = "event."  # event.<kind>; subscribe to "event.*" for all
DONE_TOPIC = "delivery.final"  # {id, workspace_id}: wakes callers waiting on any replica
WORK_TOPIC = "work"  # {workspace_id}: new or returned work; wakes dispatchers on any replica
WS_TOPIC = "workspace.changed"  # {workspace_id}: state changed; replicas refresh their view


class Events:
    def __init__(self, bus: Bus, replica: str) -> None:
        self.bus = bus
        self.replica = replica

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
