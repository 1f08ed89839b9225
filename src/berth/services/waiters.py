"""Callers waiting for a delivery's final answer, on this replica.

The dispatcher that settles a delivery resolves local waiters directly and publishes
DONE_TOPIC for the other replicas; a slow poll of the store covers a lost notification.
"""

from __future__ import annotations

import asyncio
import logging

from berth.domain.delivery import Delivery
from berth.ports import Bus, DeliveryStore
from berth.services.events import DONE_TOPIC

log = logging.getLogger("berth.waiters")
__all__ = ["Waiters"]


class Waiters:
    def __init__(self, store: DeliveryStore, bus: Bus, poll_seconds: float = 2.0) -> None:
        self._store = store
        self._bus = bus
        self._poll = poll_seconds
        self._futs: dict[str, set[asyncio.Future[Delivery]]] = {}

    def resolve(self, d: Delivery) -> None:
        for fut in self._futs.pop(d.id, ()):
            if not fut.done():
                fut.set_result(d)

    async def wait(
        self, delivery_id: str, timeout: float, *, fresh: bool = False
    ) -> Delivery | None:
        """The delivery once final, or None when `timeout` passes first. `fresh`: the caller
        has just accepted it, so it cannot be final yet and the first store read is skipped."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Delivery] = loop.create_future()
        self._futs.setdefault(delivery_id, set()).add(fut)
        deadline = loop.time() + timeout
        try:
            while True:
                if not fresh:
                    d = await self._store.get_delivery(delivery_id)
                    if d.status.final:
                        return d
                fresh = False
                left = deadline - loop.time()
                if left <= 0:
                    return None
                await asyncio.wait((fut,), timeout=min(left, self._poll))  # fut is not cancelled
                if fut.done():
                    return fut.result()
        finally:
            waiting = self._futs.get(delivery_id)
            if waiting is not None:
                waiting.discard(fut)
                if not waiting:
                    del self._futs[delivery_id]

    async def listen(self) -> None:
        """Resolve local waiters when another replica settles a delivery (runs in the lifespan)."""
        sub = self._bus.subscribe(DONE_TOPIC)
        try:
            async for _, payload in sub:
                did = payload.get("id")
                if did in self._futs:
                    try:
                        self.resolve(await self._store.get_delivery(did))
                    except Exception:
                        log.warning("could not read delivery %s", did, exc_info=True)
        finally:
            await sub.aclose()
