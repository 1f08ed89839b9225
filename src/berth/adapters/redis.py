"""Cache, Locks and Bus shared by every replica through Redis (`BERTH_REDIS_URL`).

Redis is a helper here, never the source of truth, so a brief outage must not break callers:

* `RedisCache.get` answers None when Redis cannot be reached (the caller reads the database);
  `set` and `delete` log and carry on.
* `RedisLocks` raises `LocksUnavailable` (a 503 `Unavailable`): a lease cannot be faked.
* `RedisBus.publish` logs and carries on (every caller also polls the database);
  subscriptions live through reconnects without their consumer noticing.

The bus keeps one pub/sub connection per instance, pattern-subscribed to every topic under
its prefix, and fans messages out to local subscriptions in the process. So `subscribe()`
is registered the moment it returns: it only adds a local queue. The one thing to wait for
is that shared connection, which `await bus.start()` does (also started lazily by the first
`subscribe()`; a `publish()` made before it was ever confirmed waits for it, briefly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError

from berth.domain.errors import LocksUnavailable
from berth.ports import BUS_GAP

log = logging.getLogger("berth.redis")
__all__ = ["LocksUnavailable", "RedisBus", "RedisCache", "RedisLocks", "RedisSubscription"]

DEFAULT_PREFIX = "berth:"
KEEPALIVE = 5.0  # a quiet bus connection is pinged this often; no answer by the next: reconnect
# what a dropped or refused connection looks like through redis-py
DOWN = (RedisError, OSError, asyncio.TimeoutError)

_REFRESH = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def _client(url: str, *, name: str, timeout: float, retries: int) -> Redis:
    """One short retry (a pooled connection the server dropped), then give up quickly.

    `name` shows in CLIENT LIST, so an operator can tell berth's connections apart."""
    backoff = ExponentialBackoff(cap=0.1, base=0.01) if retries else NoBackoff()
    return Redis.from_url(
        url,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(backoff, retries),
        health_check_interval=0,
        client_name=name,
    )


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


class RedisCache:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 1.0,
        name: str = "berth",
    ) -> None:
        self._r = _client(url, name=f"{name}-cache", timeout=timeout, retries=1)
        self._prefix = prefix + "cache:"

    async def get(self, key: str) -> str | None:
        try:
            raw = await self._r.get(self._prefix + key)
        except DOWN as e:
            log.warning("redis cache get %s failed: %s", key, e)
            return None
        if raw is None or isinstance(raw, str):
            return raw
        return bytes(raw).decode()

    async def set(self, key: str, value: str, ttl: float | None = None) -> None:
        try:
            if ttl is not None and ttl <= 0:  # already expired
                await self._r.delete(self._prefix + key)
            else:
                await self._r.set(self._prefix + key, value, px=None if ttl is None else _ms(ttl))
        except DOWN as e:
            log.warning("redis cache set %s failed: %s", key, e)

    async def delete(self, key: str) -> None:
        try:
            await self._r.delete(self._prefix + key)
        except DOWN as e:
            log.warning("redis cache delete %s failed: %s", key, e)

    async def close(self) -> None:
        with contextlib.suppress(*DOWN):
            await self._r.aclose()


class RedisLocks:
    """SET NX PX with a random token; refresh and release only by the token's holder."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 2.0,
        name: str = "berth",
    ) -> None:
        self._r = _client(url, name=f"{name}-locks", timeout=timeout, retries=1)
        self._prefix = prefix + "lock:"
        self._refresh = self._r.register_script(_REFRESH)
        self._release = self._r.register_script(_RELEASE)

    async def acquire(self, key: str, ttl: float) -> str | None:
        token = secrets.token_hex(16)
        try:
            ok = await self._r.set(self._prefix + key, token, nx=True, px=_ms(ttl))
        except DOWN as e:
            raise LocksUnavailable(f"cannot take lock {key}: redis is unreachable ({e})") from e
        return token if ok else None

    async def refresh(self, key: str, token: str, ttl: float) -> bool:
        try:
            n = await self._refresh(keys=[self._prefix + key], args=[token, _ms(ttl)])
        except DOWN as e:
            raise LocksUnavailable(f"cannot refresh lock {key}: redis is unreachable ({e})") from e
        return bool(n)

    async def release(self, key: str, token: str) -> None:
        try:
            await self._release(keys=[self._prefix + key], args=[token])
        except DOWN as e:
            raise LocksUnavailable(f"cannot release lock {key}: redis is unreachable ({e})") from e

    async def close(self) -> None:
        with contextlib.suppress(*DOWN):
            await self._r.aclose()


_CLOSED: Any = object()


class RedisSubscription:
    """A local queue fed by the bus's shared pub/sub connection; registered at creation."""

    def __init__(self, bus: RedisBus, topics: tuple[str, ...]) -> None:
        self.topics = topics
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._bus = bus
        self._closed = False

    def __aiter__(self) -> RedisSubscription:
        return self

    async def __anext__(self) -> tuple[str, dict[str, Any]]:
        if self._closed and self.queue.empty():
            raise StopAsyncIteration
        item = await self.queue.get()
        if item is _CLOSED:
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        self._bus._drop(self)

    def _end(self) -> None:
        if not self._closed:
            self._closed = True
            self.queue.put_nowait(_CLOSED)


class RedisBus:
    """Topics are matched exactly, or by prefix when the subscription ends with '*'."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 2.0,
        ready_wait: float = 3.0,
        max_backoff: float = 2.0,
        name: str = "berth",
    ) -> None:
        self._pub = _client(url, name=f"{name}-pub", timeout=timeout, retries=1)
        # the listener handles its own reconnects, so its client never retries by itself
        self._sub_client = _client(url, name=f"{name}-sub", timeout=timeout, retries=0)
        self._channel = prefix + "bus:"
        self._pattern = _glob_escape(self._channel) + "*"
        self._subs: list[RedisSubscription] = []
        self._ready = asyncio.Event()  # the shared subscription is confirmed by Redis now
        self._tried = asyncio.Event()  # the first connection attempt has succeeded or failed
        self._ever_ready = False
        self._ready_wait = ready_wait
        self._max_backoff = max_backoff
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # the protocol ---------------------------------------------------------
    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        if self._subs and not self._tried.is_set():
            # a local subscriber must see what is published after it subscribed: wait for the
            # first connection (only that one; during an outage publishing fails fast anyway)
            self._listen()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._tried.wait(), self._ready_wait)
        try:
            await self._pub.publish(self._channel + topic, orjson.dumps(payload))
        except DOWN as e:
            log.warning("redis publish %s failed: %s", topic, e)

    def subscribe(self, *topics: str) -> RedisSubscription:
        sub = RedisSubscription(self, topics)
        self._subs.append(sub)
        self._listen()
        return sub

    async def start(self) -> None:
        """Connect the shared subscription and wait (up to `ready_wait`) until Redis confirmed it.

        From then on every `subscribe()` sees every message published after it returned, from
        any replica. Never raises: without Redis the bus keeps trying in the background."""
        self._listen()
        try:
            await asyncio.wait_for(self._ready.wait(), self._ready_wait)
        except asyncio.TimeoutError:
            log.warning(
                "redis bus not connected after %.1fs; retrying in the background", self._ready_wait
            )

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for sub in self._subs:
            sub._end()
        self._subs.clear()
        for client in (self._pub, self._sub_client):
            with contextlib.suppress(*DOWN):
                await client.aclose()

    # internals ------------------------------------------------------------
    def _drop(self, sub: RedisSubscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        sub._end()

    def _listen(self) -> None:
        if self._task is None and not self._closed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # subscribed outside a loop: start() or publish() starts it
                return
            self._task = loop.create_task(self._run(), name="redis-bus")

    async def _run(self) -> None:
        delay = 0.0
        while not self._closed:
            pubsub: PubSub = self._sub_client.pubsub()
            try:
                await pubsub.psubscribe(self._pattern)
                pinged = False
                while True:
                    msg = await pubsub.get_message(timeout=KEEPALIVE)
                    if msg is None:  # quiet: make sure the connection is not silently dead
                        if pinged:
                            raise ConnectionError("redis bus: no answer to a ping")
                        await pubsub.ping()
                        pinged = True
                        continue
                    pinged = False
                    kind = msg["type"]
                    if kind == "psubscribe":
                        if not self._ready.is_set():
                            if self._ever_ready:
                                log.info("redis bus reconnected")
                                # what other replicas published meanwhile is lost: say so
                                self._local(BUS_GAP, {})
                            self._ready.set()
                            self._ever_ready = True
                            self._tried.set()
                        delay = 0.0
                    elif kind == "pmessage":
                        self._deliver(msg["channel"], msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a dropped connection, or anything unexpected: reconnect
                if self._ready.is_set() or not self._tried.is_set():
                    log.warning("redis bus connection lost (%s); reconnecting", e)
                self._ready.clear()
                self._tried.set()
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis 8
            delay = min(self._max_backoff, max(0.05, delay * 2))
            await asyncio.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))

    def _local(self, topic: str, payload: dict[str, Any]) -> None:
        for sub in self._subs:
            if _matches(sub.topics, topic):
                sub.queue.put_nowait((topic, payload))

    def _deliver(self, channel: bytes, data: bytes) -> None:
        topic = channel.decode()[len(self._channel) :]
        subs = [s for s in self._subs if _matches(s.topics, topic)]
        if not subs:
            return
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            log.warning("dropped a malformed bus message on %s", topic)
            return
        for sub in subs:
            sub.queue.put_nowait((topic, payload))


def _matches(patterns: tuple[str, ...], topic: str) -> bool:
    return any(p == topic or (p.endswith("*") and topic.startswith(p[:-1])) for p in patterns)


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)
