"""One contract for the shared ports (Cache, Locks, Bus), run against memory and Redis.

Redis runs need a server (`BERTH_TEST_REDIS_URL`, default db 15 on localhost): they skip
without one, and fail with CI=true. Every test works under its own key prefix and client
name, so tests never see each other's keys, channels or connections.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from berth.adapters.memory_bus import MemoryBus, MemoryCache, MemoryLocks
from berth.api.errors import edge
from berth.domain.errors import LocksUnavailable, Unavailable
from berth.ports import BUS_GAP, Bus, Cache, Locks, Subscription
from tests.services import Outage, require_redis

BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]
WAIT = 3.0  # how long a message may take to arrive
QUIET = 0.25  # how long to watch for a message that must not arrive


# fixtures ---------------------------------------------------------------------
class Names:
    """A test's own key prefix and client name on the shared Redis server."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:12]
        self.prefix = f"berth:test:{tag}:"
        self.name = f"berth-test-{tag}"


@pytest.fixture
def names() -> Names:
    return Names()


def _plain_client() -> Any:
    import redis.asyncio as aioredis

    return aioredis.from_url(require_redis(), socket_timeout=2, socket_connect_timeout=2)


async def _drop_keys(prefix: str) -> None:
    client = _plain_client()
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def admin(names: Names) -> AsyncIterator[Any]:
    """A plain client on the test Redis (for CLIENT KILL); removes the test's keys at the end."""
    client = _plain_client()
    try:
        yield client
    finally:
        await client.aclose()
        await _drop_keys(names.prefix)


@pytest.fixture(params=BACKENDS)
async def cache(request: pytest.FixtureRequest, names: Names) -> AsyncIterator[Cache]:
    if request.param == "memory":
        c: Cache = MemoryCache()
    else:
        from berth.adapters.redis import RedisCache

        c = RedisCache(require_redis(), prefix=names.prefix, name=names.name)
    try:
        yield c
    finally:
        await c.close()
        if request.param == "redis":
            await _drop_keys(names.prefix)


@pytest.fixture(params=BACKENDS)
async def locks(request: pytest.FixtureRequest, names: Names) -> AsyncIterator[Locks]:
    if request.param == "memory":
        yield MemoryLocks()
        return
    from berth.adapters.redis import RedisLocks

    lk = RedisLocks(require_redis(), prefix=names.prefix, name=names.name)
    try:
        yield lk
    finally:
        await lk.close()
        await _drop_keys(names.prefix)


@pytest.fixture(params=BACKENDS)
async def bus(request: pytest.FixtureRequest, names: Names) -> AsyncIterator[Bus]:
    """A bus that was NOT started: publishing right after subscribe() must still work."""
    if request.param == "memory":
        b: Bus = MemoryBus()
    else:
        from berth.adapters.redis import RedisBus

        b = RedisBus(require_redis(), prefix=names.prefix, name=names.name)
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
async def redis_buses(names: Names) -> AsyncIterator[Callable[[], Any]]:
    """Make RedisBus instances on one prefix: separate "replicas" of one deployment."""
    from berth.adapters.redis import RedisBus

    url = require_redis()
    made: list[RedisBus] = []

    def make(**kw: Any) -> RedisBus:
        b = RedisBus(url, prefix=names.prefix, name=f"{names.name}-{len(made)}", **kw)
        made.append(b)
        return b

    try:
        yield make
    finally:
        for b in made:
            await b.close()


# helpers ----------------------------------------------------------------------
async def receive(sub: Subscription, timeout: float = WAIT) -> tuple[str, dict[str, Any]]:
    return await asyncio.wait_for(sub.__anext__(), timeout)


async def nothing_more(sub: Subscription, wait: float = QUIET) -> None:
    """No message arrives (a closed subscription may also just end)."""
    try:
        got = await asyncio.wait_for(sub.__anext__(), wait)
    except (TimeoutError, StopAsyncIteration):
        return
    raise AssertionError(f"unexpected message {got!r}")


async def kill_clients(admin: Any, name: str, suffix: str) -> int:
    """CLIENT KILL every connection whose name is `name` + ... + `suffix` (one replica's)."""
    killed = 0
    for c in await admin.client_list():
        n = c.get("name", "")
        if n.startswith(name) and n.endswith(suffix):
            killed += await admin.execute_command("CLIENT", "KILL", "ID", c["id"])
    return killed


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


# Cache ------------------------------------------------------------------------
async def test_cache_get_set_delete(cache: Cache) -> None:
    assert await cache.get("url:a") is None
    await cache.set("url:a", "http://a:1")
    assert await cache.get("url:a") == "http://a:1"
    await cache.set("url:a", "http://a:2")
    assert await cache.get("url:a") == "http://a:2"
    assert await cache.get("url:b") is None
    await cache.delete("url:a")
    assert await cache.get("url:a") is None
    await cache.delete("url:never-set")  # deleting a missing key is fine


async def test_cache_ttl_expires(cache: Cache) -> None:
    await cache.set("short", "v", ttl=0.2)
    await cache.set("long", "v", ttl=30)
    await cache.set("forever", "v")
    assert await cache.get("short") == "v"
    await asyncio.sleep(0.35)
    assert await cache.get("short") is None
    assert await cache.get("long") == "v"
    assert await cache.get("forever") == "v"


async def test_cache_set_without_ttl_drops_the_old_ttl(cache: Cache) -> None:
    await cache.set("k", "old", ttl=0.2)
    await cache.set("k", "new")
    await asyncio.sleep(0.35)
    assert await cache.get("k") == "new"


# Locks ------------------------------------------------------------------------
async def test_lock_is_exclusive(locks: Locks) -> None:
    token = await locks.acquire("ws:1", ttl=10)
    assert token
    assert await locks.acquire("ws:1", ttl=10) is None
    other = await locks.acquire("ws:2", ttl=10)  # another key is independent
    assert other and other != token


async def test_lock_release_only_by_holder(locks: Locks) -> None:
    token = await locks.acquire("ws:1", ttl=10)
    assert token
    await locks.release("ws:1", "not-the-token")
    assert await locks.acquire("ws:1", ttl=10) is None
    await locks.release("ws:1", token)
    again = await locks.acquire("ws:1", ttl=10)
    assert again and again != token
    await locks.release("ws:1", token)  # a stale holder cannot free the new lease
    assert await locks.acquire("ws:1", ttl=10) is None


async def test_lock_ttl_expiry_frees_it(locks: Locks) -> None:
    old = await locks.acquire("ws:1", ttl=0.2)
    assert old
    await asyncio.sleep(0.35)
    new = await locks.acquire("ws:1", ttl=10)
    assert new and new != old
    assert await locks.refresh("ws:1", old, ttl=10) is False  # the old holder lost it
    await locks.release("ws:1", old)
    assert await locks.acquire("ws:1", ttl=10) is None


async def test_lock_refresh_only_by_holder_and_extends(locks: Locks) -> None:
    token = await locks.acquire("ws:1", ttl=0.4)
    assert token
    assert await locks.refresh("ws:1", "not-the-token", ttl=10) is False
    assert await locks.refresh("ws:nothing", token, ttl=10) is False
    await asyncio.sleep(0.2)
    assert await locks.refresh("ws:1", token, ttl=0.6) is True
    await asyncio.sleep(0.35)  # past the first ttl, within the refreshed one
    assert await locks.acquire("ws:1", ttl=10) is None
    await locks.release("ws:1", token)
    assert await locks.refresh("ws:1", token, ttl=10) is False  # released: nothing to refresh


# Bus --------------------------------------------------------------------------
async def test_bus_delivers_to_a_subscriber(bus: Bus) -> None:
    sub = bus.subscribe("work")
    payload = {"workspace_id": "w1", "n": 1, "nested": {"a": [1, 2.5, None, True, "x"]}}
    await bus.publish("work", payload)
    assert await receive(sub) == ("work", payload)
    await sub.aclose()


async def test_bus_message_published_right_after_subscribe_arrives(bus: Bus) -> None:
    """No start(), no sleep: subscribe() then publish() at once, on a brand new bus."""
    sub = bus.subscribe("delivery.final")
    await bus.publish("delivery.final", {"id": "d1"})
    assert await receive(sub) == ("delivery.final", {"id": "d1"})
    late = bus.subscribe("delivery.final")  # a later subscriber, again at once
    await bus.publish("delivery.final", {"id": "d2"})
    assert await receive(late) == ("delivery.final", {"id": "d2"})
    assert await receive(sub) == ("delivery.final", {"id": "d2"})


async def test_bus_exact_and_prefix_topics(bus: Bus) -> None:
    await bus.start()
    exact = bus.subscribe("work")
    events = bus.subscribe("event.*")
    both = bus.subscribe("work", "event.restart.*")
    for topic in ("workspace.changed", "event.a", "works", "event.restart.done", "eventx", "work"):
        await bus.publish(topic, {"t": topic})
    assert [(await receive(exact))[0]] == ["work"]
    assert [(await receive(events))[0] for _ in range(2)] == ["event.a", "event.restart.done"]
    assert [(await receive(both))[0] for _ in range(2)] == ["event.restart.done", "work"]
    for sub in (exact, events, both):
        await nothing_more(sub)


async def test_bus_every_subscriber_gets_every_message_in_order(bus: Bus) -> None:
    await bus.start()
    subs = [bus.subscribe("t") for _ in range(3)]
    for i in range(5):
        await bus.publish("t", {"i": i})
    for sub in subs:
        assert [(await receive(sub))[1]["i"] for _ in range(5)] == [0, 1, 2, 3, 4]
        await nothing_more(sub, 0.05)


async def test_bus_aclose_stops_delivery(bus: Bus) -> None:
    await bus.start()
    gone = bus.subscribe("t")
    stays = bus.subscribe("t")
    await bus.publish("t", {"i": 1})
    assert await receive(gone) == ("t", {"i": 1})
    assert await receive(stays) == ("t", {"i": 1})
    await gone.aclose()
    await bus.publish("t", {"i": 2})
    assert await receive(stays) == ("t", {"i": 2})  # it was published and went around
    await nothing_more(gone)


async def test_bus_publish_without_subscribers_is_fine(bus: Bus) -> None:
    await bus.publish("nobody.listens", {"x": 1})
    sub = bus.subscribe("nobody.listens")
    await bus.publish("other", {"x": 2})
    await nothing_more(sub)


# Redis only: replicas and outages -----------------------------------------------
@pytest.mark.redis
async def test_two_replicas_see_each_other(redis_buses: Callable[[], Any]) -> None:
    a, b = redis_buses(), redis_buses()
    await asyncio.gather(a.start(), b.start())
    on_a, on_b = a.subscribe("event.*"), b.subscribe("event.*")
    await a.publish("event.from_a", {"r": "a"})  # at once after b.subscribe(): no wait
    await b.publish("event.from_b", {"r": "b"})
    for sub in (on_a, on_b):
        got = [await receive(sub) for _ in range(2)]
        assert got == [("event.from_a", {"r": "a"}), ("event.from_b", {"r": "b"})]


@pytest.mark.redis
async def test_prefixes_isolate_deployments(redis_buses: Callable[[], Any]) -> None:
    from berth.adapters.redis import RedisBus

    mine = redis_buses()
    other = RedisBus(require_redis(), prefix=f"berth:test:{uuid.uuid4().hex[:12]}:")
    try:
        await asyncio.gather(mine.start(), other.start())
        sub = mine.subscribe("*")
        await other.publish("work", {"x": 1})
        await mine.publish("work", {"x": 2})
        assert await receive(sub) == ("work", {"x": 2})
        await nothing_more(sub)
    finally:
        await other.close()


@pytest.mark.redis
async def test_subscription_survives_a_killed_connection(
    redis_buses: Callable[..., Any],
    admin: Any,
    names: Names,
) -> None:
    bus = redis_buses(max_backoff=0.2)
    await bus.start()
    other = redis_buses()  # another replica, unaffected, publishes too
    await other.start()
    sub = bus.subscribe("work")
    await bus.publish("work", {"i": 0})
    assert await receive(sub) == ("work", {"i": 0})

    assert await kill_clients(admin, names.name + "-0", "-sub") == 1
    # messages published while the subscription reconnects may be lost (callers poll the
    # database); the consumer must see no error and get what is published once it is back
    deadline = time.monotonic() + WAIT
    i = 0
    while True:
        i += 1
        await other.publish("work", {"i": i})
        try:
            topic, payload = await receive(sub, 0.1)
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "the subscription never came back"
    assert topic == "work" and payload["i"] >= 1
    while bus.ready is False:
        await asyncio.sleep(0.01)
    while True:  # drain anything still in flight from the loop above
        try:
            await receive(sub, 0.1)
        except TimeoutError:
            break
    await other.publish("work", {"i": "after"})
    assert await receive(sub) == ("work", {"i": "after"})

    # the publishing connection too: the next publish reconnects by itself
    assert await kill_clients(admin, names.name + "-0", "-pub") == 1
    await bus.publish("work", {"i": "own"})
    assert await receive(sub) == ("work", {"i": "own"})


@pytest.mark.redis
async def test_cache_and_locks_survive_killed_connections(admin: Any, names: Names) -> None:
    from berth.adapters.redis import RedisCache, RedisLocks

    url = require_redis()
    cache = RedisCache(url, prefix=names.prefix, name=names.name)
    locks = RedisLocks(url, prefix=names.prefix, name=names.name)
    try:
        await cache.set("k", "v")
        token = await locks.acquire("l", ttl=10)
        assert token
        assert await kill_clients(admin, names.name, "-cache") == 1
        assert await kill_clients(admin, names.name, "-locks") == 1
        assert await cache.get("k") == "v"
        assert await locks.refresh("l", token, ttl=10) is True
        await locks.release("l", token)
        assert await locks.acquire("l", ttl=10)
    finally:
        await cache.close()
        await locks.close()


@pytest.mark.redis
async def test_redis_down_cache_and_bus_degrade_locks_raise() -> None:
    """Nothing listens on the port: cache and bus answer at once, locks say why they can't."""
    from berth.adapters.redis import RedisBus, RedisCache, RedisLocks

    url = closed_port_url()
    cache, locks = RedisCache(url), RedisLocks(url)
    bus = RedisBus(url, ready_wait=0.2)
    try:
        t0 = time.monotonic()
        assert await cache.get("k") is None
        await cache.set("k", "v", ttl=5)
        await cache.delete("k")
        sub = bus.subscribe("work")  # usable; it keeps reconnecting in the background
        await bus.start()  # gives up waiting after ready_wait, without raising
        await bus.publish("work", {"x": 1})
        await nothing_more(sub, 0.05)
        assert time.monotonic() - t0 < 2.0
        for attempt in (locks.acquire("l", 5), locks.refresh("l", "t", 5), locks.release("l", "t")):
            with pytest.raises(LocksUnavailable) as e:
                await attempt
            assert isinstance(e.value, Unavailable) and edge(e.value).status == 503
    finally:
        await cache.close()
        await locks.close()
        await bus.close()


@pytest.mark.redis
async def test_brief_redis_outage(redis_buses: Callable[..., Any], names: Names) -> None:
    """Redis goes away for a moment (connections cut, then refused) and comes back."""
    from berth.adapters.redis import RedisBus, RedisCache, RedisLocks

    proxy = Outage(require_redis())
    await proxy.up()
    bus = RedisBus(proxy.url, prefix=names.prefix, max_backoff=0.2)
    cache = RedisCache(proxy.url, prefix=names.prefix)
    locks = RedisLocks(proxy.url, prefix=names.prefix)
    direct = redis_buses()  # a replica whose Redis link is fine
    try:
        await asyncio.gather(bus.start(), direct.start())
        sub = bus.subscribe("work")
        await cache.set("k", "v")
        await direct.publish("work", {"i": 0})
        assert await receive(sub) == ("work", {"i": 0})

        await proxy.down()
        assert await cache.get("k") is None  # the caller falls back to the database
        await cache.set("k", "lost")
        await bus.publish("work", {"i": "lost"})  # logged, not raised
        with pytest.raises(LocksUnavailable):
            await locks.acquire("l", ttl=5)
        consumer = asyncio.ensure_future(receive(sub, 10))
        await asyncio.sleep(0.5)  # several refused reconnects
        assert not consumer.done()  # the consumer just waits: no error reaches it

        await proxy.up()
        deadline = time.monotonic() + WAIT
        while not bus.ready:
            assert time.monotonic() < deadline, "the bus never reconnected"
            await asyncio.sleep(0.02)
        await direct.publish("work", {"i": "back"})
        assert await consumer == ("work", {"i": "back"})
        assert await cache.get("k") == "v"
        assert await locks.acquire("l", ttl=5)
        await bus.publish("work", {"i": "own"})
        assert await receive(sub) == ("work", {"i": "own"})
    finally:
        await bus.close()
        await cache.close()
        await locks.close()
        await proxy.down()


async def test_an_expired_lease_cannot_be_refreshed_even_if_nobody_took_it(locks: Locks) -> None:
    token = await locks.acquire("ws:1", ttl=0.2)
    assert token
    await asyncio.sleep(0.35)
    assert await locks.refresh("ws:1", token, ttl=10) is False
    assert await locks.acquire("ws:1", ttl=10) is not None


@pytest.mark.redis
async def test_a_subscriber_hears_that_its_bus_was_away(
    redis_buses: Callable[..., Any],
    admin: Any,
    names: Names,
) -> None:
    """What other replicas published while the connection was down is lost; the bus tells
    its own subscribers when it is back (berth then refreshes its roster), and only then."""
    bus = redis_buses(max_backoff=0.2)
    await bus.start()
    gap = bus.subscribe(BUS_GAP)
    await nothing_more(gap)  # the first connection is no gap
    assert await kill_clients(admin, names.name + "-0", "-sub") == 1
    assert await receive(gap) == (BUS_GAP, {})
    await nothing_more(gap)
