"""The fast lane's hand-off at the HTTP edge, over the service tests' in-memory world (no
lane process: the test writes what the lane would have written, then hands off as it
would). Python takes the lease over, settles as its own dispatcher would, and answers the
lane's caller as for an original send."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from berth.api.app import create_app
from berth.domain.delivery import Delivery
from berth.domain.delivery import DeliveryStatus as D
from berth.domain.lifecycle import WorkspaceState as S
from berth.domain.workspace import Workspace
from berth.lane import Lane
from berth.ports import Settle
from berth.wire import draining_error, rpc_result
from tests.contract.test_store import make_d
from tests.service.fakes import World, world


@dataclass
class Handing:
    w: World
    lane: Lane
    ws: Workspace
    http: httpx.AsyncClient  # over the lane's Unix socket, as uvicorn serves it
    tcp: httpx.AsyncClient  # over TCP (httpx's ASGI scope: a server with a port)

    @property
    def owner(self) -> str:
        return self.lane.owner

    async def lane_accepts(
        self, mid: str, *, owner: str | None = None, feed: bool = True, lease: float = 30
    ) -> Delivery:
        """The lane's plain send: in flight under its lease, told to Python by the feed
        (`feed=False`: its feed line has not come yet)."""
        msg = {"role": "ROLE_USER", "messageId": mid, "parts": [{"text": f"hi {mid}"}]}
        raw = json.dumps({"jsonrpc": "2.0", "id": 7, "method": "message/send",
                          "params": {"message": msg}}).encode()  # fmt: skip
        d, _ = await self.w.store.accept(make_d(self.ws.id, mid, request=raw, caller="operator"))
        (got,) = await self.w.store.claim(
            self.ws.id,
            capacity=None,
            owner=owner or self.owner,
            lease_seconds=lease,
            now=time.time(),
        )
        assert got.id == d.id
        if feed:
            await self.feed(got, "f")
        return got

    async def feed(self, d: Delivery, event: str) -> None:
        """The lane's feed line for `d`: "f" (forwarding) or "d" (settled done)."""
        line: dict[str, object] = {"e": event, "id": d.id, "ws": self.ws.id,
                                   "mid": d.message_id, "created": d.created_at}  # fmt: skip
        if event == "f":
            line["caller"] = "operator"
        else:
            line.update(finished=time.time(), fwd=0.01)
        await self.lane.feed.apply(json.dumps(line).encode())

    async def lane_settles(self, d: Delivery, reply: bytes) -> None:
        """The lane's settle of a reply: done in the store, then its feed line."""
        how = Settle(D.DONE, False, reply=reply, reply_status=200, forward=1)
        assert await self.w.store.settle(d.id, self.owner, how, time.time()) is not None
        await self.feed(d, "d")

    async def hand(
        self,
        d: Delivery,
        outcome: str,
        *,
        body: bytes = b"",
        status: int | None = None,
        wait: float = 5.0,
        secret: str | None = "",
        extra: dict[str, str] | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> httpx.Response:
        headers = {
            "x-berth-lane-secret": self.lane.env["BERTH_LANE_SECRET"] if secret == "" else secret,
            "x-berth-lane-outcome": outcome,
            "x-berth-lane-wait": str(wait),
            "x-berth-lane-detail": "from the lane",
            **(extra or {}),
        }
        if status is not None:
            headers["x-berth-lane-status"] = str(status)
            headers["content-type"] = "application/json"
        headers = {k: v for k, v in headers.items() if v is not None}
        client = http or self.http
        return await client.post(f"/v1/lane/handoff/{d.id}", content=body, headers=headers)


@asynccontextmanager
async def handing(**settings: Any) -> AsyncIterator[Handing]:
    async with world(retry_backoff_seconds=0.05, **settings) as w:
        ws = await w.create("a")
        lane = Lane(w.c, Path("/nonexistent/lane"), [], Path("/nonexistent/berth.sock"),
                    db=Path("/nonexistent/berth.db"))  # fmt: skip
        w.c.lane = lane  # never started: the test plays the lane
        app = create_app(container=w.c)
        uds = httpx.ASGITransport(over_unix_socket(app, str(lane.handoff_path)))  # type: ignore[arg-type]
        async with (
            httpx.AsyncClient(transport=uds, base_url="http://berth") as http,
            httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://berth") as tcp,
        ):
            yield Handing(w, lane, ws, http, tcp)


def over_unix_socket(app: ASGIApp, path: str) -> ASGIApp:
    """`app` as uvicorn serves it on a Unix socket: `server` is (its path, None), no client."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "server": (path, None), "client": None}
        await app(scope, receive, send)

    return asgi


@pytest.fixture
async def h() -> AsyncIterator[Handing]:
    async with handing() as h:
        yield h


async def test_a_reply_hand_off_settles_done_and_answers_the_reply(h: Handing) -> None:
    d = await h.lane_accepts("m1")
    assert h.w.c.dispatcher.in_flight(h.ws.id) == [d.id]
    reply = rpc_result(7, {"message": {"role": "ROLE_AGENT", "parts": [{"text": "late"}]}})
    r = await h.hand(d, "reply", body=reply, status=200)
    assert r.status_code == 200 and r.content == reply
    assert r.headers["x-berth-delivery-id"] == d.id and r.headers["x-berth-message-id"] == "m1"
    assert "x-berth-replayed" not in r.headers
    got = await h.w.c.deliveries.get(d.id)
    assert (got.status, got.reply, got.forwards, got.attempts) == (D.DONE, reply, 1, 0)
    assert h.w.c.dispatcher.in_flight(h.ws.id) == []
    assert h.w.agent(h.ws).received == []  # settled from the lane's answer, not forwarded again
    m = h.w.c.metrics
    assert m.value("berth_deliveries_total", workspace="a", outcome="done") == 1


async def test_a_transport_hand_off_is_retried_by_the_dispatcher(h: Handing) -> None:
    d = await h.lane_accepts("m1")
    r = await h.hand(d, "transport")
    assert r.status_code == 200, r.text  # the redelivery's answer, within the caller's wait
    assert r.json()["result"]["message"]["parts"][0]["text"] == "echo: hi m1"
    assert "x-berth-replayed" not in r.headers
    got = await h.w.c.deliveries.get(d.id)
    assert (got.status, got.forwards, got.attempts) == (D.DONE, 2, 1)
    assert h.w.agent(h.ws).executed == ["m1"]
    m = h.w.c.metrics
    assert m.value("berth_forward_failures_total", workspace="a", kind="transport") == 1


async def test_an_unreached_hand_off_with_no_caller_is_answered_at_once(h: Handing) -> None:
    d = await h.lane_accepts("m1")
    r = await h.hand(d, "unreached", wait=0)
    assert r.status_code == 202 and r.json()["delivery_id"] == d.id
    got = await h.w.c.deliveries.wait(d.id, 5)
    assert got is not None and got.status is D.DONE and got.forwards == 2


async def test_a_draining_reply_is_held_not_counted(h: Handing) -> None:
    d = await h.lane_accepts("m1")
    r = await h.hand(d, "reply", body=draining_error(7), status=200, wait=0)
    assert r.status_code == 202
    await asyncio.sleep(0.2)  # inside DRAINING_HOLD (0.5 s): back in the queue, held
    held = await h.w.c.deliveries.get(d.id)
    assert (held.status, held.attempts) == (D.QUEUED, 0) and held.not_before > time.time()
    assert h.w.agent(h.ws).received == []
    got = await h.w.c.deliveries.wait(d.id, 5)
    assert got is not None and (got.status, got.attempts, got.forwards) == (D.DONE, 0, 2)


@pytest.mark.parametrize("secret", [None, "wrong", "x" * 32])
async def test_without_the_lanes_secret_the_path_is_unknown(h: Handing, secret: str | None) -> None:
    d = await h.lane_accepts("m1")
    r = await h.hand(d, "transport", secret=secret)
    assert r.status_code == 404
    assert r.json() == (await h.http.post("/v1/no/such/route")).json()
    got = await h.w.c.deliveries.get(d.id)
    assert (got.status, got.lease_owner) == (D.IN_FLIGHT, h.owner)
    assert h.w.c.dispatcher.in_flight(h.ws.id) == [d.id]


async def test_a_hand_off_is_refused_when_the_lane_is_off(h: Handing) -> None:
    d = await h.lane_accepts("m1")
    secret = h.lane.env["BERTH_LANE_SECRET"]
    h.w.c.lane = None
    r = await h.hand(d, "transport", secret=secret)
    assert r.status_code == 404
    assert (await h.w.c.deliveries.get(d.id)).lease_owner == h.owner


async def test_a_delivery_no_longer_the_lanes_is_not_settled_but_its_answer_is_waited_for(
    h: Handing,
) -> None:
    d = await h.lane_accepts("m1")
    await h.w.c.deliveries.release_leases(h.owner)  # as after the lane exited: redelivered
    handed = rpc_result(7, {"message": {"parts": [{"text": "the lane's"}]}})
    r = await h.hand(d, "reply", body=handed, status=200)
    assert r.status_code == 200, r.text
    assert r.json()["result"]["message"]["parts"][0]["text"] == "echo: hi m1"  # not handed's
    got = await h.w.c.deliveries.get(d.id)
    assert (got.status, got.forwards) == (D.DONE, 2) and got.reply != handed
    assert h.w.c.dispatcher.in_flight(h.ws.id) == []


async def test_a_malformed_hand_off_is_refused(h: Handing) -> None:
    d = await h.lane_accepts("m1")
    assert (await h.hand(d, "maybe")).status_code == 422
    assert (await h.hand(d, "reply", body=b"{}")).status_code == 422  # no status
    assert (await h.w.c.deliveries.get(d.id)).lease_owner == h.owner


async def test_the_hand_off_is_in_no_openapi_document(h: Handing) -> None:
    doc = (await h.http.get("/openapi.json")).json()
    assert doc["paths"] and not [p for p in doc["paths"] if "lane" in p]


async def test_a_hand_off_whose_take_fails_is_no_longer_counted_in_flight(
    h: Handing, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = await h.lane_accepts("m1")
    assert h.w.c.dispatcher.in_flight(h.ws.id) == [d.id]

    async def away(*_: object) -> None:
        raise RuntimeError("the store is away")

    monkeypatch.setattr(h.w.c.deliveries, "take_lease", away)
    r = await h.hand(d, "transport")
    assert r.status_code == 500
    # the lane's forward is over: a drain does not wait for it, its slot is free
    assert h.w.c.dispatcher.in_flight(h.ws.id) == []
    assert await h.w.c.dispatcher.wait_idle(h.ws.id, 0.1)


async def _until(cond: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_drain_waits_for_a_lane_forward_whose_feed_line_has_not_come(h: Handing) -> None:
    d = await h.lane_accepts("m1", feed=False)  # committed; its "f" line still in the lane
    assert h.w.c.dispatcher.in_flight(h.ws.id) == []
    await h.w.c.runner.move(h.ws, S.DRAINING)  # as a restart does before its drain
    assert not await h.w.c.dispatcher.wait_idle(h.ws.id, 0.3)  # read from the store
    assert h.w.c.dispatcher.in_flight(h.ws.id) == [d.id]
    idle = asyncio.ensure_future(h.w.c.dispatcher.wait_idle(h.ws.id, 5))
    await asyncio.sleep(0.1)
    assert not idle.done()
    r = await h.hand(d, "transport", wait=0)  # the lane's forward ends in a hand-off
    assert r.status_code == 202
    assert await asyncio.wait_for(idle, 5)
    await h.feed(d, "f")  # the late feed line does not bring it back
    assert h.w.c.dispatcher.in_flight(h.ws.id) == []
    got = await h.w.c.deliveries.get(d.id)
    assert (got.status, got.attempts) == (D.QUEUED, 0)  # planned: the workspace drains


async def test_a_restart_drains_the_lanes_forward_before_its_feed_line(h: Handing) -> None:
    agent = h.w.agent(h.ws)
    agent.serves_signals = False  # a stock agent: berth drains on its side
    d = await h.lane_accepts("m1", feed=False)
    record, _ = await h.w.c.workspaces.restart("a", reason=None, drain_seconds=5)
    await _until(lambda: h.w.c.roster.peek(h.ws.id).state is S.DRAINING)  # type: ignore[union-attr]
    await asyncio.sleep(0.3)
    assert h.w.c.roster.peek(h.ws.id).state is S.DRAINING  # type: ignore[union-attr]
    assert h.w.agent(h.ws) is agent  # not stopped under the lane's forward
    await h.feed(d, "f")
    reply = rpc_result(7, {"message": {"parts": [{"text": "by the lane"}]}})
    await h.lane_settles(d, reply)
    await _until(lambda: h.w.agent(h.ws) is not agent)
    await _until(lambda: h.w.c.roster.peek(h.ws.id).state is S.ONLINE)  # type: ignore[union-attr]
    r = await h.w.c.store.get_restart(h.ws.id, record.id)
    assert r.drain_report is not None
    assert (r.drain_report["mode"], r.drain_report["drained"]) == ("berth", True)
    assert r.drain_report["completed"] == ["m1"] and r.drain_report["in_flight"] == 0
    got = await h.w.c.deliveries.get(d.id)
    assert (got.status, got.reply, got.forwards) == (D.DONE, reply, 1)  # not run again
    assert h.w.agent(h.ws).executed == []


async def test_a_lane_forward_whose_lease_ran_out_is_redelivered_by_the_upkeep(
    h: Handing,
) -> None:
    # the lane gave it up (a hand-off Python refused or never got) and renews it no more
    d = await h.lane_accepts("m1", lease=0.3)
    assert h.w.c.dispatcher.in_flight(h.ws.id) == [d.id]
    got = await h.w.c.deliveries.wait(d.id, 8)
    assert got is not None and (got.status, got.forwards) == (D.DONE, 2)
    assert h.w.agent(h.ws).executed == ["m1"]
    assert h.w.c.dispatcher.in_flight(h.ws.id) == []  # no longer counted as the lane's


@pytest.mark.parametrize("told", [True, False])
async def test_a_hand_off_is_judged_against_the_workspace_as_the_lane_read_it(told: bool) -> None:
    async with handing(max_attempts=1) as h:
        d = await h.lane_accepts("m1")
        run = h.ws.run_token_hash or ""
        ws = await h.w.c.runner.update(h.ws.id, crash_count=h.ws.crash_count + 1)  # since then
        extra = {"x-berth-lane-crashes": str(h.ws.crash_count), "x-berth-lane-run": run}
        r = await h.hand(d, "transport", wait=0, extra=extra if told else None)
        assert r.status_code == 202
        got = await h.w.c.deliveries.wait(d.id, 5)
        assert got is not None and (got.status, got.attempts) == (D.DEAD, 1)
        assert ws.crash_count == 1 and got.reason is not None
        # the agent crashed during the forward: poison, as Python's own forward judges it
        assert got.reason.startswith("poison: the agent crashed") is told, got.reason


async def test_a_transport_failure_after_draining_is_planned_only_for_the_run_that_drained() -> (
    None
):
    async with handing(max_attempts=1) as h:
        old_run = h.ws.run_token_hash
        assert old_run is not None
        h.w.c.dispatcher.retire(h.ws.id, old_run)  # that run said DRAINING, then was replaced
        await h.w.c.runner.update(h.ws.id, run_token_hash="a-newer-run")
        d = await h.lane_accepts("m1")
        r = await h.hand(d, "transport", wait=0, extra={"x-berth-lane-run": old_run})
        assert r.status_code == 202
        await asyncio.sleep(0.5)
        got = await h.w.c.deliveries.get(d.id)
        assert got.attempts == 0 and got.status is not D.DEAD  # the old run's planned exit


async def test_malformed_crashes_are_refused(h: Handing) -> None:
    d = await h.lane_accepts("m1")
    r = await h.hand(d, "transport", extra={"x-berth-lane-crashes": "many"})
    assert r.status_code == 422
    assert (await h.w.c.deliveries.get(d.id)).lease_owner == h.owner


async def test_a_hand_off_that_did_not_come_over_the_lanes_socket_is_refused(h: Handing) -> None:
    d = await h.lane_accepts("m1")
    r = await h.hand(d, "transport", http=h.tcp)  # the secret, but over TCP
    assert r.status_code == 404
    got = await h.w.c.deliveries.get(d.id)
    assert (got.status, got.lease_owner) == (D.IN_FLIGHT, h.owner)
    assert h.w.c.dispatcher.in_flight(h.ws.id) == [d.id]
    assert (await h.hand(d, "transport", wait=0)).status_code == 202  # over the socket: taken


async def test_a_hand_off_over_the_relay_socket_is_refused(h: Handing) -> None:
    """What callers send reaches Python over berth.sock (relayed, however they spell the
    path: %-escapes, an absolute form, a pipe): the hand-off route is not there, even with
    the secret. Only berth-lane.sock, where the lane writes its own hand-offs alone."""
    d = await h.lane_accepts("m1")
    app = create_app(container=h.w.c)
    relay = httpx.ASGITransport(over_unix_socket(app, str(h.lane.upstream)))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=relay, base_url="http://berth") as relayed:
        r = await h.hand(d, "transport", http=relayed)
    assert r.status_code == 404
    got = await h.w.c.deliveries.get(d.id)
    assert (got.status, got.lease_owner) == (D.IN_FLIGHT, h.owner)
