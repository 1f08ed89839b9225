"""In-process Cache, Locks and Bus: the embedded default and the unit-test doubles."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

__all__ = ["MemoryBus", "MemoryCache", "MemoryLocks"]


class MemoryCache:
    def __init__(self) -> None:
        self._d: dict[str, tuple[str, float | None]] = {}

    async def get(self, key: str) -> str | None:
        hit = self._d.get(key)
        if hit is None:
            return None
        value, until = hit
        if until is not None and until < time.monotonic():
            self._d.pop(key, None)
            return None
        return value

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        self._d[key] = (value, None if ttl is None else time.monotonic() + ttl)

    async def delete(self, key: str) -> None:
        self._d.pop(key, None)

    async def close(self) -> None:
        self._d.clear()


class MemoryLocks:
    def __init__(self) -> None:
        self._held: dict[str, tuple[str, float]] = {}

    async def acquire(self, key: str, ttl: float) -> str | None:
        now = time.monotonic()
        held = self._held.get(key)
        if held is not None and held[1] > now:
            return None
        token = secrets.token_hex(8)
        self._held[key] = (token, now + ttl)
        return token

    async def refresh(self, key: str, token: str, ttl: float) -> bool:
        held = self._held.get(key)
        if held is None or held[0] != token or held[1] <= time.monotonic():
            return False  # like Redis: an expired lease is gone, even if nobody took it
        self._held[key] = (token, time.monotonic() + ttl)
        return True

    async def release(self, key: str, token: str) -> None:
        held = self._held.get(key)
        if held is not None and held[0] == token:
            del self._held[key]

    async def close(self) -> None:
        return None


class Subscription:
    """Registered at creation (no message published after `subscribe()` returns is missed)."""

    def __init__(self, bus: MemoryBus, topics: tuple[str, ...]) -> None:
        self.topics = topics
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._bus = bus

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> tuple[str, dict[str, Any]]:
        return await self.queue.get()

    async def aclose(self) -> None:
        self._bus._drop(self)


class MemoryBus:
    """Topics are matched exactly, or by prefix when the subscription ends with '*'."""

    def __init__(self) -> None:
        self._subs: list[Subscription] = []

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        for sub in self._subs:
            if _matches(sub.topics, topic):
                sub.queue.put_nowait((topic, payload))

    def subscribe(self, *topics: str) -> Subscription:
        sub = Subscription(self, topics)
        self._subs.append(sub)
        return sub

    async def start(self) -> None:
        """Nothing to connect: in one process every subscription is live at once."""

    def _drop(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    async def close(self) -> None:
        self._subs.clear()


def _matches(patterns: tuple[str, ...], topic: str) -> bool:
    return any(p == topic or (p.endswith("*") and topic.startswith(p[:-1])) for p in patterns)
