"""The fast lane's feed, driven line by line (no lane needed) over berth's real services:
an accepted-in-flight line counts the delivery as accepted, forwarded and in flight here
(a drain waits for it); a done line ends it, counts it and wakes its waiter; bad lines
are skipped and the feed goes on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from berth.adapters.memory_bus import MemoryBus
from berth.domain.delivery import Delivery
from berth.domain.delivery import DeliveryStatus as D
from berth.domain.workspace import Workspace
from berth.lane import LaneFeed
from berth.ports import Settle
from berth.services.events import BATCH_TOPIC, unpack
from tests.contract.test_store import make_d
from tests.service.fakes import World, world


@pytest.fixture
async def w() -> AsyncIterator[World]:
    async with world() as w:
        yield w


def feed_of(w: World) -> LaneFeed:
    c = w.c
    return LaneFeed(c.deliveries, c.dispatcher, c.events, c.metrics, c.roster.name_of)


def owner(w: World) -> str:
    return f"{w.c.dispatcher.owner}:lane"


async def lane_accepts(w: World, ws: Workspace, mid: str) -> Delivery:
    """What the lane writes for a plain send: the delivery, in flight under its lease."""
    d, _ = await w.store.accept(make_d(ws.id, mid, caller="operator", request=b'{"id": 7}'))
    (got,) = await w.store.claim(
        ws.id, capacity=None, owner=owner(w), lease_seconds=30, now=time.time()
    )
    assert got.id == d.id
    return got


def line(**ev: Any) -> bytes:
    return orjson.dumps(ev)


def f_line(d: Delivery) -> bytes:
    return line(e="f", id=d.id, ws=d.workspace_id, mid=d.message_id, caller=d.caller, created=1.0)


def d_line(d: Delivery, fwd: float = 0.25) -> bytes:
    ev = {"e": "d", "id": d.id, "ws": d.workspace_id, "mid": d.message_id}
    return line(**ev, created=d.created_at, finished=d.created_at + 0.5, fwd=fwd)


def summary(w: World, name: str, ws: str) -> tuple[float, float]:
    """(count, sum) of a per-workspace duration."""
    n, total = w.c.metrics._durations[name].get(ws, [0.0, 0.0])
    return n, total


async def flows(bus: MemoryBus, sub: Any, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < n:
        topic, payload = await asyncio.wait_for(sub.__anext__(), 2)
        out += [p for kind, p in unpack(topic, payload) if kind.startswith("delivery.")]
    return out


async def test_an_accepted_line_is_counted_forwarded_and_in_flight(w: World) -> None:
    ws = await w.create("a")
    d = await lane_accepts(w, ws, "m1")
    active: list[str] = []
    w.c.deliveries.on_work(active.append)
    sub = w.c.bus.subscribe(BATCH_TOPIC)
    await feed_of(w).apply(f_line(d))
    m = w.c.metrics
    assert m.value("berth_deliveries_accepted_total", workspace="a") == 1
    assert summary(w, "berth_queue_wait_seconds", "a") == (1, 0.0)
    assert active == [ws.id]  # idle suspend sees the message
    got = await flows(w.c.bus, sub, 2)
    assert [(f["kind"], f["delivery_id"], f["message_id"]) for f in got] == [
        ("delivery.accepted", d.id, "m1"),
        ("delivery.forwarded", d.id, "m1"),
    ]
    assert got[1]["forward"] == 1
    assert w.c.dispatcher.in_flight(ws.id) == [d.id]
    assert not await w.c.dispatcher.wait_idle(ws.id, 0.05)  # a drain waits for it
    await sub.aclose()


async def test_a_done_line_ends_it_counts_it_and_wakes_its_waiter(w: World) -> None:
    ws = await w.create("a")
    d = await lane_accepts(w, ws, "m1")
    feed = feed_of(w)
    sub = w.c.bus.subscribe(BATCH_TOPIC)
    await feed.apply(f_line(d))
    waiter = asyncio.create_task(w.c.deliveries.wait(d.id, 5))
    drained = asyncio.create_task(w.c.dispatcher.wait_idle(ws.id, 5))
    await asyncio.sleep(0.05)
    assert not waiter.done() and not drained.done()
    how = Settle(D.DONE, reply=b'{"result": 1}', reply_status=200, forward=1)
    assert await w.store.settle(d.id, owner(w), how, time.time()) is not None  # the lane's
    await feed.apply(d_line(d))
    got = await asyncio.wait_for(waiter, 1)
    assert got is not None and (got.id, got.status, got.reply) == (d.id, D.DONE, b'{"result": 1}')
    assert await asyncio.wait_for(drained, 1) is True
    assert w.c.dispatcher.in_flight(ws.id) == []
    m = w.c.metrics
    assert m.value("berth_deliveries_total", workspace="a", outcome="done") == 1
    assert summary(w, "berth_forward_seconds", "a") == (1, 0.25)
    assert summary(w, "berth_delivery_seconds", "a") == (1, 0.5)
    kinds = [f["kind"] for f in await flows(w.c.bus, sub, 3)]
    assert kinds == ["delivery.accepted", "delivery.forwarded", "delivery.done"]
    await sub.aclose()


async def test_a_done_line_nobody_waits_for_reads_nothing(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = await w.create("a")
    d = await lane_accepts(w, ws, "m1")
    reads: list[str] = []
    real = w.store.get_delivery

    async def counted(delivery_id: str) -> Delivery:
        reads.append(delivery_id)
        return await real(delivery_id)

    monkeypatch.setattr(w.store, "get_delivery", counted)
    feed = feed_of(w)
    await feed.apply(f_line(d))
    await feed.apply(d_line(d))
    assert reads == [] and w.c.dispatcher.in_flight(ws.id) == []


async def test_a_hand_off_that_overtakes_its_feed_line_leaves_nothing_in_flight(
    w: World,
) -> None:
    ws = await w.create("a")
    d = await lane_accepts(w, ws, "m1")
    w.c.dispatcher.lane.ended(d.id)  # the hand-off came first
    await feed_of(w).apply(f_line(d))
    assert w.c.dispatcher.in_flight(ws.id) == []
    assert w.c.metrics.value("berth_deliveries_accepted_total", workspace="a") == 1


async def test_the_lane_exiting_forgets_its_forwards(w: World) -> None:
    ws = await w.create("a")
    d = await lane_accepts(w, ws, "m1")
    await feed_of(w).apply(f_line(d))
    drained = asyncio.create_task(w.c.dispatcher.wait_idle(ws.id, 5))
    await asyncio.sleep(0.02)
    w.c.dispatcher.lane.forget()
    assert await asyncio.wait_for(drained, 1) is True
    assert w.c.dispatcher.in_flight(ws.id) == []


@pytest.mark.parametrize(
    "bad",
    [
        b"{nope",
        b"[1, 2]",
        b'{"x": 1}',
        b'{"e": "f", "id": "d1"}',  # fields missing
        b'{"e": "f", "id": 5, "ws": "w", "mid": "m", "caller": "c", "created": 1}',
        b'{"e": "d", "id": "d1", "ws": "w", "mid": "m", "created": "soon", "finished": 2, "fwd": 1}',
    ],
)
async def test_a_malformed_line_is_skipped_with_a_warning(
    w: World, bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    ws = await w.create("a")
    d = await lane_accepts(w, ws, "m1")
    feed = feed_of(w)
    with caplog.at_level(logging.WARNING, logger="berth.lane"):
        await feed.apply(bad)
    assert "malformed feed line" in caplog.text
    assert w.c.dispatcher.in_flight(ws.id) == [] and w.c.dispatcher.lane._gone == {}
    await feed.apply(f_line(d))  # the feed goes on
    assert w.c.dispatcher.in_flight(ws.id) == [d.id]


async def test_ready_is_told_and_an_unknown_event_is_ignored(
    w: World, caplog: pytest.LogCaptureFixture
) -> None:
    feed = feed_of(w)
    told: list[bool] = []
    feed.on_ready = lambda: told.append(True)
    with caplog.at_level(logging.DEBUG, logger="berth.lane"):
        await feed.apply(b'{"e": "later", "id": "x"}')
        await feed.apply(b'{"e": "ready"}')
    assert told == [True]
    assert "does not know" in caplog.text and "malformed" not in caplog.text


async def test_a_batch_of_lines_adds_up_as_the_lines_one_by_one(
    w: World, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What one read of the feed brings is applied at once (counts and durations per
    workspace once, flows in the lane's order): the same as line by line. A malformed line
    in the middle is skipped alone; the waiters of deliveries done in the batch are woken
    by it, each on its own: one whose read fails leaves the others woken at once."""
    a, b = await w.create("a"), await w.create("b")
    d1 = await lane_accepts(w, a, "m1")
    d2 = await lane_accepts(w, a, "m2")
    d3 = await lane_accepts(w, b, "m3")
    feed = feed_of(w)
    sub = w.c.bus.subscribe(BATCH_TOPIC)
    await feed.apply_many([f_line(d1), f_line(d2), f_line(d3)])
    waiters = {d.id: asyncio.create_task(w.c.deliveries.wait(d.id, 5)) for d in (d1, d2, d3)}
    await asyncio.sleep(0.05)
    assert not any(t.done() for t in waiters.values())
    how = Settle(D.DONE, reply=b'{"result": 1}', reply_status=200, forward=1)
    for d in (d1, d2, d3):  # the lane settles them
        assert await w.store.settle(d.id, owner(w), how, time.time()) is not None
    real = w.c.deliveries.get

    async def flaky(delivery_id: str) -> Delivery:
        if delivery_id == d2.id:
            raise RuntimeError("the store hiccups")
        return await real(delivery_id)

    monkeypatch.setattr(w.c.deliveries, "get", flaky)
    lines = [d_line(d1, fwd=0.25), b"{nope", d_line(d3, fwd=0.1), d_line(d2, fwd=0.5)]
    with caplog.at_level(logging.WARNING, logger="berth.lane"):
        await feed.apply_many(lines)
    assert "malformed feed line" in caplog.text and "could not read" in caplog.text
    for d in (d1, d3):  # woken by the feed, not by the waiters' own poll of the log
        got = await asyncio.wait_for(waiters[d.id], 0.5)
        assert got is not None and got.status is D.DONE
    assert not waiters[d2.id].done()  # its read failed: it finds the answer in the log itself
    m = w.c.metrics
    assert m.value("berth_deliveries_accepted_total", workspace="a") == 2
    assert m.value("berth_deliveries_accepted_total", workspace="b") == 1
    assert m.value("berth_deliveries_total", workspace="a", outcome="done") == 2
    assert m.value("berth_lane_deliveries_total", workspace="b") == 1
    assert summary(w, "berth_queue_wait_seconds", "a") == (2, 0.0)
    assert summary(w, "berth_forward_seconds", "a") == (2, 0.75)
    assert summary(w, "berth_delivery_seconds", "b") == (1, 0.5)
    # the fleet bucket's exemplar is the lane's last (d2, of workspace a), though the
    # batch counts workspace a's deliveries before b's
    hist = m._hist["berth_delivery_seconds"]
    assert [e.labels for e in hist.exemplars if e is not None] == [{"delivery_id": d2.id}]
    assert w.c.dispatcher.in_flight(a.id) == [] and w.c.dispatcher.in_flight(b.id) == []
    flows_got = [(f["kind"], f["delivery_id"]) for f in await flows(w.c.bus, sub, 9)]
    assert flows_got == [
        ("delivery.accepted", d1.id),
        ("delivery.forwarded", d1.id),
        ("delivery.accepted", d2.id),
        ("delivery.forwarded", d2.id),
        ("delivery.accepted", d3.id),
        ("delivery.forwarded", d3.id),
        ("delivery.done", d1.id),
        ("delivery.done", d3.id),
        ("delivery.done", d2.id),
    ]
    await sub.aclose()
    assert (await asyncio.wait_for(waiters[d2.id], 5)) is not None


async def test_flow_events_past_the_buffer_are_dropped_and_counted(w: World) -> None:
    from berth.services.events import FLOW_MAX

    ev = w.c.events
    ev._flow = [{"kind": "x"}] * (FLOW_MAX - 2)
    ev.dropped = 0
    ev.flows([{"kind": "delivery.done", "n": i} for i in range(5)])
    assert len(ev._flow) == FLOW_MAX and ev.dropped == 3
    assert [e.get("n") for e in ev._flow[-2:]] == [0, 1]
    ev.flows([{"kind": "delivery.done"}])
    assert len(ev._flow) == FLOW_MAX and ev.dropped == 4
    ev._flow = []


async def test_the_remembered_ends_keep_the_most_recent_and_drop_the_oldest(w: World) -> None:
    from berth.services.lane_forwards import GONE_MAX, OVER_MAX

    lane = w.c.dispatcher.lane
    for i in range(OVER_MAX + 10):
        lane.ended(f"d{i}")  # never started here: each is also remembered as gone
    assert len(lane._over) == OVER_MAX and len(lane._gone) == GONE_MAX
    assert "d9" not in lane._over and "d10" in lane._over and f"d{OVER_MAX + 9}" in lane._over
    oldest_gone = OVER_MAX + 10 - GONE_MAX
    assert f"d{oldest_gone - 1}" not in lane._gone and f"d{oldest_gone}" in lane._gone
    lane.started("ws", f"d{OVER_MAX + 9}")  # its end came first: not in flight
    assert lane.busy("ws") == 0
