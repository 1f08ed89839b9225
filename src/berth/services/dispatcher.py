"""The dispatcher: claims deliveries in order, forwards them, and settles what came back.

One loop per workspace with work, woken on accept, on settle and when the workspace comes
online; it ends when it has nothing to claim and nothing in flight, so idle workspaces
cost nothing. A workspace that is not online is simply not claimed for: a restart changes
only who may claim, never the path a message takes.
"""

from __future__ import annotations

import asyncio
import logging
import time

from berth.domain.delivery import Delivery, DeliveryPolicy, DeliveryStatus, Outcome
from berth.domain.errors import AgentUnreachable, StoreUnavailable
from berth.domain.lifecycle import PLANNED_INTERRUPTION, WorkspaceState
from berth.domain.workspace import Workspace
from berth.metrics import Metrics
from berth.ports import AgentClient, AgentReply, Settle
from berth.services.agent_link import AgentLink
from berth.services.delivery_log import DeliveryLog
from berth.services.events import Events
from berth.services.lane_forwards import LaneForwards
from berth.services.replies import classify, classify_rest
from berth.services.roster import Roster
from berth.services.routing import Router
from berth.services.streams import stream_topic
from berth.wire import is_stream, is_terminal_event, rest_path

log = logging.getLogger("berth.dispatcher")
__all__ = ["Dispatcher"]

DRAINING_HOLD = 0.5  # seconds to wait before re-offering a message the agent refused while draining
SETTLE_RETRY = 0.5  # seconds between settles of a known outcome while the store is away
LANE_RESYNC = 1.0  # seconds between a drain's reads of the lane's forwards from the store
CRASH_NOTICE = 0.3  # seconds a transport failure waits for the exit of the agent to be noticed


class _NoRestInterface(Exception):
    """An HTTP+JSON send to an agent that serves no HTTP+JSON: it will never take it."""


class Dispatcher:
    def __init__(
        self,
        deliveries: DeliveryLog,
        client: AgentClient,
        roster: Roster,
        link: AgentLink,
        events: Events,
        metrics: Metrics,
        policy: DeliveryPolicy,
        router: Router,
        *,
        lease_seconds: float,
        forward_timeout: float,
        poll_seconds: float = 1.0,
        sole: bool = False,
    ) -> None:
        self._log, self._client, self._roster, self._link = deliveries, client, roster, link
        self._events, self._metrics, self._policy = events, metrics, policy
        self._router = router
        self.owner = deliveries.replica
        self._lease = lease_seconds
        self._timeout = forward_timeout
        self._poll = poll_seconds
        # the only dispatcher on this log (SQLite): a forward that ends frees capacity only
        # here, so it needs no claim unless the queue may hold more. With several replicas
        # another replica's queued work may be waiting for exactly that capacity.
        self._sole = sole
        self._wake: dict[str, asyncio.Event] = {}
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._forwards: dict[str, dict[str, asyncio.Task[None]]] = {}
        self._runs: dict[str, dict[str, str | None]] = {}  # ws -> delivery -> run it went to
        self._idle: dict[str, asyncio.Event] = {}
        # the fast lane's forwards (docs/fast-lane.md), counted with this replica's own
        self.lane = LaneForwards(
            deliveries, freed=lambda ws_id: self.wake(ws_id, work=False), idle=self._maybe_idle
        )
        self._draining_run: dict[
            str, str | None
        ] = {}  # ws id -> the run whose agent refused: DRAINING
        # per workspace: may the log hold claimable work this replica has not tried to claim?
        # False after a claim that took less than it could (the queue was empty then) until
        # new work is announced (an accept, a requeue, another replica, a poll timeout).
        self._maybe_queued: dict[str, bool] = {}
        self._closing = False  # no new claims (berth is stopping)
        self._stopped = False  # past the shutdown grace: upkeep ends too
        deliveries.dispatch_with(self)

    # wake-ups --------------------------------------------------------------
    def wake(self, ws_id: str, *, work: bool = True) -> None:
        """Run the workspace's loop. `work=False`: only capacity was freed (a forward ended),
        so a claim is worth its round trip only if the queue may hold more."""
        if self._closing:
            return
        if work or not self._sole:
            self._maybe_queued[ws_id] = True
        elif not self._maybe_queued.get(ws_id, True):
            return  # freed capacity, nothing known to be queued: the loop would not claim
        ev = self._wake.get(ws_id)
        if ev is None:
            ev = self._wake[ws_id] = asyncio.Event()
        ev.set()
        task = self._loops.get(ws_id)
        if task is None or task.done():
            self._loops[ws_id] = asyncio.create_task(
                self._loop(ws_id), name=f"dispatch-{ws_id[:8]}"
            )

    def claim_on_accept(self, workspace_id: str) -> tuple[int | None, float] | None:
        """A message to an online workspace with room is claimed in the commit that accepts
        it (the claim still takes the oldest queued first, so order holds)."""
        ws = self._roster.peek(workspace_id)
        if self._closing or ws is None or ws.state is not WorkspaceState.ONLINE:
            return None
        cap = None if ws.native_session else ws.max_concurrency
        if cap is not None and self._busy(workspace_id) >= cap:
            return None
        return cap, self._lease

    def forward_claimed(self, workspace_id: str, claimed: list[Delivery]) -> None:
        ws = self._roster.peek(workspace_id)
        for d in claimed:
            if ws is None or self._closing:  # removed meanwhile: the lease returns it
                return
            self._start(ws, d)

    def retire(self, ws_id: str, run_token_hash: str | None) -> None:
        """A deploy replaced this run: a failed forward to it is its planned exit."""
        self._draining_run[ws_id] = run_token_hash

    def in_flight_to(self, ws_id: str, run_token_hash: str | None) -> list[str]:
        """Delivery ids this replica is forwarding to one run of the workspace right now."""
        return [i for i, run in self._runs.get(ws_id, {}).items() if run == run_token_hash]

    def in_flight(self, ws_id: str) -> list[str]:
        """Delivery ids this replica (its fast lane included) is forwarding to the workspace
        right now."""
        return [*self._forwards.get(ws_id, {}), *self.lane.ids(ws_id)]

    def _busy(self, ws_id: str) -> int:
        return len(self._forwards.get(ws_id, {})) + self.lane.busy(ws_id)

    def _maybe_idle(self, ws_id: str) -> None:
        if not self._forwards.get(ws_id) and not self.lane.busy(ws_id):
            ev = self._idle.get(ws_id)
            if ev is not None:
                ev.set()

    async def wait_idle(self, ws_id: str, timeout: float) -> bool:
        """Wait until this replica (its fast lane included) forwards nothing to the
        workspace (berth-side drain). The lane's forwards are read from the store first, and
        again every LANE_RESYNC seconds while any is left (one it gave up is over)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self.lane.sync(ws_id)
        while self._forwards.get(ws_id) or self.lane.busy(ws_id):
            ev = self._idle.setdefault(ws_id, asyncio.Event())
            ev.clear()
            left = deadline - loop.time()
            if left <= 0:
                return False
            lane = bool(self.lane.busy(ws_id)) and self.lane.owner is not None
            try:
                await asyncio.wait_for(ev.wait(), min(left, LANE_RESYNC) if lane else left)
            except asyncio.TimeoutError:
                if lane:
                    await self.lane.sync(ws_id)
        return True

    # the loop --------------------------------------------------------------
    async def _loop(self, ws_id: str) -> None:
        ev = self._wake[ws_id]
        while not self._closing:
            ev.clear()
            ws = self._roster.peek(ws_id)
            if ws is None or ws.state is WorkspaceState.REMOVED:
                return
            claimed: list[Delivery] = []
            if ws.state is WorkspaceState.ONLINE:
                cap = None if ws.native_session else ws.max_concurrency
                busy = self._busy(ws_id)
                if (cap is None or busy < cap) and self._maybe_queued.get(ws_id, True):
                    self._maybe_queued[ws_id] = False  # an accept during the claim sets it again
                    try:
                        claimed = await self._log.claim(
                            ws_id, capacity=cap, lease_seconds=self._lease
                        )
                    except Exception:
                        self._maybe_queued[ws_id] = True
                        log.exception("claim failed for %s", ws.name)
                    if cap is not None and len(claimed) >= cap - busy:
                        self._maybe_queued[ws_id] = True  # it took all it could: there may be more
                if self._closing:  # stopping since the claim: close() gives these back
                    claimed = []
                for d in claimed:
                    self._start(ws, d)
            if claimed and self._maybe_queued.get(ws_id, True):
                continue
            if not self._forwards.get(ws_id) and not ev.is_set():
                return  # nothing to watch: the next wake starts the loop again
            try:
                await asyncio.wait_for(
                    ev.wait(), self._poll * (1 if ws.state is WorkspaceState.ONLINE else 5)
                )
            except asyncio.TimeoutError:
                # the slow poll: work a lost notification did not announce (Redis away)
                self._maybe_queued[ws_id] = True

    def _start(self, ws: Workspace, d: Delivery) -> None:
        ws = self._router.choose(ws, d)  # the instance it goes to (a canary's, or the serving)
        task = asyncio.create_task(self._forward(ws, d), name=f"forward-{d.id[:8]}")
        self._forwards.setdefault(ws.id, {})[d.id] = task
        self._runs.setdefault(ws.id, {})[d.id] = ws.run_token_hash

    async def _forward(self, ws: Workspace, d: Delivery) -> None:
        started = time.monotonic()
        if d.forwards > 1:
            self._metrics.inc("berth_redeliveries_total", workspace=ws.name)
        elif d.first_forwarded_at is not None:
            self._metrics.observe(
                "berth_queue_wait_seconds", d.first_forwarded_at - d.created_at, workspace=ws.name
            )
        detail = None
        try:
            path = rest_path(d.method)
            url = self._link.target(ws) if path is None else self._link.rest_target(ws, path)
            if url is None and path is not None and ws.agent_url is not None:
                raise _NoRestInterface()
            if url is None:
                raise AgentUnreachable("no agent url known", reached=False)
            headers = {"content-type": "application/json", **d.headers}  # as the caller sent it
            if is_stream(d.method):
                reply = await self._stream(d, url, headers)
            else:
                reply = await self._client.post(url, d.request, headers, timeout=self._timeout)
            outcome = classify(reply) if path is None else classify_rest(reply)
            detail = f"HTTP {reply.status}"
        except _NoRestInterface:
            outcome, reply = Outcome.REJECTED, None
            detail = "the agent's card declares no HTTP+JSON interface"
        except AgentUnreachable as e:
            outcome = Outcome.TRANSPORT if e.reached else Outcome.UNREACHED
            reply, detail = None, str(e) or type(e).__name__
        except Exception as e:  # never lose a claimed delivery to a bug: treat as transport
            log.exception("forward of %s failed", d.id)
            outcome, reply, detail = Outcome.TRANSPORT, None, repr(e)
        self._metrics.observe(
            "berth_forward_seconds", time.monotonic() - started, workspace=ws.name
        )
        body, status = (reply.body, reply.status) if reply else (None, None)
        ctype = reply.content_type if reply else None
        await self._conclude(ws, d, outcome, body, status, detail, ctype)

    def adopt(
        self,
        ws: Workspace,
        d: Delivery,
        outcome: Outcome,
        body: bytes | None,
        status: int | None,
        detail: str | None,
        content_type: str | None,
    ) -> asyncio.Task[None]:
        """Settle an attempt made elsewhere (the fast lane's, whose lease this replica has
        taken over) exactly as one of its own forwards, counted in flight until settled."""
        task = asyncio.create_task(
            self._conclude(ws, d, outcome, body, status, detail, content_type),
            name=f"adopt-{d.id[:8]}",
        )
        self._forwards.setdefault(ws.id, {})[d.id] = task
        self._runs.setdefault(ws.id, {})[d.id] = ws.run_token_hash
        return task

    async def _conclude(
        self,
        ws: Workspace,
        d: Delivery,
        outcome: Outcome,
        body: bytes | None,
        status: int | None,
        detail: str | None,
        ctype: str | None,
    ) -> None:
        """Settle a forward's outcome (kept through a short store outage), then free its slot."""
        give_up = time.monotonic() + self._lease  # past it, the lease is someone else's to take
        try:
            while True:
                try:
                    await self._settle(ws, d, outcome, body, status, detail, ctype)
                    break
                except StoreUnavailable:  # the outcome is known: keep it until the store is back
                    if time.monotonic() > give_up:
                        raise
                    await asyncio.sleep(SETTLE_RETRY)
        except Exception:
            log.exception(
                "settling %s failed; its lease will expire and it will be redelivered", d.id
            )
        finally:
            forwards = self._forwards.get(ws.id, {})
            if forwards.get(d.id) is asyncio.current_task():
                del forwards[d.id]
                self._runs.get(ws.id, {}).pop(d.id, None)
            self._maybe_idle(ws.id)
            self.wake(ws.id, work=False)

    async def _stream(self, d: Delivery, url: str, headers: dict[str, str]) -> AgentReply:
        """Forward a stream, publishing each event; the reply is its terminal event."""
        topic = stream_topic(d.id)
        async for item in self._client.stream(url, d.request, headers, self._timeout):
            if item.kind == "reply":  # no stream: the agent's plain answer (an up-front error)
                return AgentReply(item.status, item.data, item.content_type)
            data = item.data
            await self._events.signal(
                topic, t="event", data=data.decode(), forward=d.forwards, event=item.event
            )
            if is_terminal_event(data):
                return AgentReply(200, data, "text/event-stream")
        raise AgentUnreachable("the stream ended before a final event")

    async def _settle(
        self,
        ws: Workspace,
        d: Delivery,
        outcome: Outcome,
        body: bytes | None,
        status: int | None,
        detail: str | None,
        content_type: str | None = None,
    ) -> None:
        now_ws = self._roster.peek(ws.id)
        failed = outcome in (Outcome.TRANSPORT, Outcome.UNREACHED)
        if failed and now_ws is not None and now_ws.state is WorkspaceState.ONLINE:
            await asyncio.sleep(CRASH_NOTICE)  # let a crash of the agent be noticed first
            now_ws = self._roster.peek(ws.id)
        if outcome is Outcome.DRAINING:
            self._draining_run[ws.id] = ws.run_token_hash
        # An agent that said it drains (a SIGTERM from outside berth: `docker stop`, `kill`)
        # then goes away: a failed forward to that same run is its planned exit, not the
        # message's fault, even before berth notices the exit.
        planned = (
            now_ws is None
            or now_ws.state in PLANNED_INTERRUPTION
            or (
                outcome is Outcome.TRANSPORT
                and ws.run_token_hash is not None
                and self._draining_run.get(ws.id) == ws.run_token_hash
            )
        )
        crashed = now_ws is not None and now_ws.crash_count > ws.crash_count
        verdict = self._policy.judge(outcome, attempts=d.attempts, planned=planned, crashed=crashed)
        now = time.time()
        hold = DRAINING_HOLD if outcome is Outcome.DRAINING else verdict.retry_in
        reason = verdict.reason
        if failed and verdict.status is not DeliveryStatus.DONE and detail:
            reason = f"{reason or 'transport failure'}: {detail}"
        how = Settle(
            verdict.status,
            verdict.count_attempt,
            reply=body if verdict.status is DeliveryStatus.DONE else None,
            reply_status=status,
            reply_type=content_type if verdict.status is DeliveryStatus.DONE else None,
            reason=reason,
            not_before=now + hold if hold else 0.0,
            forward=d.forwards,
        )
        settled = await self._log.settle(d, how)
        if settled is None:
            return  # the lease was lost (a restart requeued it, or another replica took over)
        self._router.observe(ws, d, outcome, settled.status, body)
        if failed:
            kind = "planned" if planned else outcome.value
            self._metrics.inc("berth_forward_failures_total", workspace=ws.name, kind=kind)
        if settled.status is DeliveryStatus.QUEUED:
            self._maybe_queued[ws.id] = True  # back in the queue: the next claim must look
        if hold:
            asyncio.get_running_loop().call_later(hold, self.wake, ws.id)

    # background upkeep -----------------------------------------------------
    async def upkeep(self) -> None:
        """Renew this replica's leases, take over expired ones, expire TTLs (runs in the lifespan)."""
        last_renew = 0.0
        while not self._stopped:  # through the shutdown grace: its forwards keep their leases
            await asyncio.sleep(self._poll)
            now = time.time()
            try:
                if now - last_renew >= self._lease / 3:
                    ids = [i for fw in self._forwards.values() for i in fw]
                    await self._log.renew(ids, self._lease)
                    last_renew = now
                expired = await self._log.requeue_expired()
                for d in expired:
                    log.warning("lease of delivery %s expired; redelivering", d.id)
                # a fast lane forward whose lease ran out was given up by the lane (a
                # hand-off Python refused or never got): over, its slot free for the redelivery
                self.lane.lost([d.id for d in expired])
                await self._log.expire_due()
                await self._sweep()
            except Exception:
                log.exception("dispatcher upkeep failed; retrying")

    async def _sweep(self) -> None:
        """The slow poll, for work a lost notification did not announce (Redis away): one
        grouped read of the log, then a wake for each online workspace with queued work
        and no loop (an idle workspace costs nothing here, however many there are)."""
        for ws_id, b in (await self._log.backlogs()).items():
            ws = self._roster.peek(ws_id)
            loop = self._loops.get(ws_id)
            if b.queued and ws is not None and ws.state is WorkspaceState.ONLINE:
                if loop is None or loop.done():
                    self.wake(ws_id)

    async def close(self, grace: float = 0.0) -> None:
        """Stop claiming; let the forwards running now finish for up to `grace` seconds
        (their replies are settled as usual); cut the rest, and give this replica's leases
        back, so another replica (or this one's next start) delivers what was cut at once
        rather than after its lease (`lease_seconds`) runs out."""
        self._closing = True
        for ev in self._wake.values():
            ev.set()
        running = [t for fw in self._forwards.values() for t in fw.values()]
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        self._stopped = True
        tasks = list(self._loops.values()) + [
            t for fw in self._forwards.values() for t in fw.values()
        ]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            released = await self._log.release_leases()
        except Exception:  # the store is away: the leases run out instead
            log.exception("could not give this replica's leases back; they will expire")
            return
        if released:
            log.info("gave back %d in-flight deliveries for redelivery", len(released))
