"""The delivery log as one service: every write to a delivery goes through here.

It checks each move against `domain.delivery` before writing, takes the allowed source
statuses of every conditional write from there (adapters never re-type them), and
publishes each outcome itself: new work to the dispatchers (this replica's directly,
others' through the bus), final deliveries to waiting callers, metrics and events. No
caller has to remember to tell anyone that a delivery moved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from berth.domain.delivery import (
    CANCELABLE,
    PENDING,
    RETRYABLE,
    Delivery,
    DeliveryStatus,
    QueueLimit,
    check_move,
)
from berth.domain.errors import Conflict, Overloaded
from berth.domain.workspace import Workspace
from berth.metrics import Metrics
from berth.ports import Bus, DeliveryStore, Settle
from berth.services.events import DONE_TOPIC, WORK_TOPIC, Events
from berth.services.streams import stream_topic
from berth.services.waiters import Waiters
from berth.wire import is_stream

log = logging.getLogger("berth.delivery_log")
ADMISSION_REFRESH = 0.25  # seconds an admission decision may rely on a read of the queue


@dataclass
class Backlog:
    queued: int
    in_flight: int
    oldest_wait: float | None  # seconds the queue's head has waited, when it was read
    read_at: float


class Claimer(Protocol):
    """This replica's dispatcher, as the log sees it."""

    def wake(self, workspace_id: str) -> None:
        """The workspace may have work to claim."""

    def claim_on_accept(self, workspace_id: str) -> tuple[int | None, float] | None:
        """(capacity, lease seconds) when a message accepted now may be claimed in the
        same commit (the workspace is online with room), else None."""

    def forward_claimed(self, workspace_id: str, claimed: list[Delivery]) -> None:
        """Forward deliveries claimed for this replica along with an accept."""


D = DeliveryStatus
__all__ = ["Backlog", "Claimer", "DeliveryLog"]


def _names(statuses: frozenset[DeliveryStatus]) -> str:
    return " or ".join(sorted(s.value for s in statuses))


class DeliveryLog:
    def __init__(
        self,
        store: DeliveryStore,
        bus: Bus,
        events: Events,
        metrics: Metrics,
        *,
        replica: str,
        sole: bool,
        poll_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
        name_of: Callable[[str], str] = str,
    ) -> None:
        self._name_of = name_of  # a workspace's name for metric labels (default: its id)
        self._now = clock
        self._store = store
        self._events = events
        self._metrics = metrics
        self.replica = replica
        # The only replica on this log (SQLite): no other dispatcher needs telling.
        self._sole = sole
        self._waiters = Waiters(store, bus, poll_seconds)
        self._on_work: list[Callable[[str], None]] = []
        self._claimer: Claimer | None = None
        # admission's view of every queue: read fleet-wide (one query) at most every
        # ADMISSION_REFRESH seconds; a workspace missing from the last read had nothing
        # pending then (`_bulk_at`); this replica's accepts since are counted in
        self._backlog: dict[str, Backlog] = {}
        self._bulk_at = float("-inf")
        self._bulk: asyncio.Future[dict[str, Backlog]] | None = None

    def on_work(self, fn: Callable[[str], None]) -> None:
        """Call `fn(workspace_id)` whenever this replica learns a workspace may have work
        (a message arrived, or went back to the queue)."""
        self._on_work.append(fn)

    def dispatch_with(self, claimer: Claimer) -> None:
        """This replica's dispatcher: woken on new work, and asked to claim a message in the
        commit that accepts it."""
        self._claimer = claimer

    async def _announce(self, ws_id: str, *, claimed: bool = False) -> None:
        """New or returned work (`claimed`: an accept claimed along with its message, so
        only the listeners that watch activity need to know)."""
        self.active(ws_id)
        if claimed:
            return
        if self._claimer is not None:
            self._claimer.wake(ws_id)
        if not self._sole:
            await self._events.signal(WORK_TOPIC, workspace_id=ws_id, replica=self.replica)

    def active(self, ws_id: str) -> None:
        """A message for the workspace is being delivered (idle suspend's activity)."""
        for fn in self._on_work:
            fn(ws_id)

    def waiting(self, delivery_id: str) -> bool:
        """Someone on this replica waits for the delivery's final answer."""
        return self._waiters.waiting(delivery_id)

    def resolve(self, d: Delivery) -> None:
        """Wake this replica's waiters of `d`, settled final elsewhere (the fast lane)."""
        self._waiters.resolve(d)

    def _flow(self, kind: str, d: Delivery, **extra: Any) -> None:
        """A message-flow event about `d` (buffered; see Events.flow)."""
        self._events.flow(
            kind, delivery_id=d.id, workspace_id=d.workspace_id, message_id=d.message_id, **extra
        )

    async def _finished(self, d: Delivery) -> None:
        name = self._name_of(d.workspace_id)
        self._metrics.inc("berth_deliveries_total", workspace=name, outcome=d.status.value)
        if d.finished_at is not None:
            self._metrics.observe(
                "berth_delivery_seconds",
                d.finished_at - d.created_at,
                workspace=name,
                exemplar={"delivery_id": d.id},
            )
        self._waiters.resolve(d)
        if not self._sole:  # waiters on other replicas; the only replica resolved its own
            await self._events.signal(DONE_TOPIC, id=d.id, workspace_id=d.workspace_id)
        if is_stream(d.method):
            await self._events.signal(stream_topic(d.id), t="final", status=d.status.value)
        self._flow(f"delivery.{d.status.value}", d)
        if d.status is not D.DONE:
            await self._events.emit(
                f"delivery.{d.status.value}",
                delivery_id=d.id,
                workspace_id=d.workspace_id,
                message_id=d.message_id,
                reason=d.reason,
            )

    # reads ----------------------------------------------------------------
    async def get(self, delivery_id: str) -> Delivery:
        return await self._store.get_delivery(delivery_id)

    async def find(
        self, workspace_id: str, message_id: str, caller: str | None = None
    ) -> Delivery | None:
        """The delivery of a messageId: of this caller, or (None) of any, oldest first."""
        return await self._store.find_delivery(workspace_id, message_id, caller)

    async def recent(
        self, workspace_id: str, status: DeliveryStatus | None = None, limit: int = 100
    ) -> list[Delivery]:
        return await self._store.list_deliveries(workspace_id, status, limit)

    def expect(self, delivery_id: str) -> asyncio.Future[Delivery | None]:
        """A wait registered before the accept (Waiters.expect): pass it to `wait` as
        `first`, or to `drop`."""
        return self._waiters.expect(delivery_id)

    def drop(self, delivery_id: str, fut: asyncio.Future[Delivery | None]) -> None:
        self._waiters.drop(delivery_id, fut)

    async def wait(
        self,
        delivery_id: str,
        timeout: float,
        *,
        first: asyncio.Future[Delivery | None] | None = None,
    ) -> Delivery | None:
        """The delivery once final, or None when `timeout` passes first."""
        return await self._waiters.wait(delivery_id, timeout, first=first)

    async def listen(self) -> None:
        """Resolve local waiters when another replica settles a delivery (a background loop;
        not run on the only replica of a log, which resolves its own)."""
        await self._waiters.listen()

    # the message's path ---------------------------------------------------
    async def accept(
        self, d: Delivery, *, workspace_name: str, limit: QueueLimit | None = None
    ) -> tuple[Delivery, bool]:
        """Into the log (from here on the message cannot be lost), or the existing delivery
        of the same (workspace, caller, messageId). Returns (delivery, created).

        With a `limit`, a new message to a workspace whose queue is over it is refused
        (Overloaded: 429 at the edge); a message already accepted is never refused, so a
        caller retrying an accepted send still gets its reply."""
        if limit is not None:
            why = await self._over(d.workspace_id, limit)
            if why is not None:
                existing = await self._store.find_delivery(d.workspace_id, d.message_id, d.caller)
                if existing is not None:
                    return existing, False
                self._metrics.inc("berth_admission_refused_total", workspace=workspace_name)
                raise Overloaded(
                    f"workspace {workspace_name} is overloaded: {why}; try again later"
                )
        spec = None if self._claimer is None else self._claimer.claim_on_accept(d.workspace_id)
        got: list[Delivery] = []
        if spec is None:
            stored, created = await self._store.accept(d)
        else:
            # (a caller cancelled here loses `got`: what that flush claimed stays in flight
            # until its lease expires, then is redelivered. Only a shutdown cancels here:
            # uvicorn does not cancel a handler whose client left.)
            stored, created, got = await self._store.accept_claim(
                d, capacity=spec[0], owner=self.replica, lease_seconds=spec[1], now=self._now()
            )
        if created:
            self._metrics.inc("berth_deliveries_accepted_total", workspace=workspace_name)
            backlog = self._backlog.get(d.workspace_id)
            if backlog is not None and stored.status is D.QUEUED:
                backlog.queued += 1
            self._flow("delivery.accepted", stored)
        if got and self._claimer is not None:
            for g in got:
                self._flow("delivery.forwarded", g, forward=g.forwards)
            self._claimer.forward_claimed(d.workspace_id, got)
        if created:
            await self._announce(stored.workspace_id, claimed=stored.status is not D.QUEUED)
        return stored, created

    async def status_of(self, ws: Workspace, b: Backlog | None = None) -> dict[str, Any]:
        """The workspace's public record with its queue (`b`, else read now): depth, in
        flight, age."""
        if b is None:
            b = await self.backlog(ws.id)
        return ws.public(b.queued, b.in_flight, b.oldest_wait)

    async def backlog(self, workspace_id: str) -> Backlog:
        """How much waits in a workspace's queue and for how long (read fresh)."""
        queued, in_flight = await self._store.pending(workspace_id)
        head = await self._store.queue_head(workspace_id)
        now = self._now()
        b = Backlog(queued, in_flight, None if head is None else max(0.0, now - head), now)
        self._backlog[workspace_id] = b
        return b

    async def backlogs(self) -> dict[str, Backlog]:
        """`backlog` of every workspace with a pending delivery, in one read (a workspace
        missing from it has nothing queued or in flight)."""
        now = self._now()
        got = {
            ws_id: Backlog(
                p.queued, p.in_flight, None if p.head is None else max(0.0, now - p.head), now
            )
            for ws_id, p in (await self._store.backlogs()).items()
        }
        self._backlog, self._bulk_at = dict(got), now  # admission's view, fresh
        return got

    async def _over(self, workspace_id: str, limit: QueueLimit) -> str | None:
        """Why the queue refuses new messages, or None. Reads every queue at once, at most
        every ADMISSION_REFRESH seconds (counting this replica's accepts between reads),
        so admission costs the hot path almost nothing however many workspaces share the
        traffic (one read per workspace made sends spread over 1,000 slower than to one)."""
        now = self._now()
        b = self._backlog.get(workspace_id)
        if b is None or now - b.read_at > ADMISSION_REFRESH:
            if now - self._bulk_at > ADMISSION_REFRESH:
                await self._read_backlogs()
            b = self._backlog.get(workspace_id)
            if b is None or b.read_at < self._bulk_at:  # nothing pending at the last read
                b = self._backlog[workspace_id] = Backlog(0, 0, None, self._bulk_at)
        wait = None if b.oldest_wait is None else b.oldest_wait + (now - b.read_at)
        return limit.refusal(b.queued, wait)

    async def _read_backlogs(self) -> None:
        """`backlogs()`, once for all concurrent callers."""
        if self._bulk is None:
            self._bulk = asyncio.ensure_future(self.backlogs())
            self._bulk.add_done_callback(lambda _: setattr(self, "_bulk", None))
        await asyncio.shield(self._bulk)

    async def claim(
        self, workspace_id: str, *, capacity: int | None, lease_seconds: float
    ) -> list[Delivery]:
        got = await self._store.claim(
            workspace_id,
            capacity=capacity,
            owner=self.replica,
            lease_seconds=lease_seconds,
            now=self._now(),
        )
        for d in got:
            self._flow("delivery.forwarded", d, forward=d.forwards)
        return got

    async def renew(self, ids: list[str], lease_seconds: float) -> int:
        return await self._store.renew(self.replica, ids, self._now() + lease_seconds)

    async def settle(self, d: Delivery, how: Settle) -> Delivery | None:
        """End this replica's attempt at a claimed delivery; None when the lease was lost
        (a restart requeued it, or another replica took it over)."""
        check_move(D.IN_FLIGHT, how.status)
        settled = await self._store.settle(d.id, self.replica, how, self._now())
        if settled is not None and settled.status.final:
            await self._finished(settled)
        return settled

    # returning work to the queue ---------------------------------------------
    async def requeue_in_flight(self, workspace_id: str | None) -> list[str]:
        """Everything in flight (of one workspace, or all: berth's own restart on SQLite)
        back to the queue, attempts unchanged, original order."""
        ids = await self._store.requeue_in_flight(workspace_id)
        if ids and workspace_id is not None:
            await self._announce(workspace_id)
        return ids

    async def release_leases(self, owner: str | None = None) -> list[Delivery]:
        """This replica's leases given back (it is stopping), or those of `owner` (the fast
        lane, when it exits): what it had in flight goes back to the queue at once, for
        another replica (or this one's next start) to deliver, instead of waiting out the
        leases."""
        got = await self._store.release_leases(owner or self.replica)
        for ws_id in dict.fromkeys(d.workspace_id for d in got):
            await self._announce(ws_id)
        return got

    async def take_lease(self, delivery_id: str, from_owner: str) -> Delivery | None:
        """The lease of an attempt `from_owner` (the fast lane) holds, now this replica's, so
        its dispatcher settles it; None when `from_owner` no longer holds it."""
        return await self._store.take_lease(delivery_id, from_owner, self.replica)

    async def leased(self, workspace_id: str, owner: str) -> list[str]:
        """Ids of the workspace's deliveries in flight under `owner`'s lease (the fast
        lane's), read from the store: what it forwards now, whether or not its feed said so."""
        return await self._store.leased(workspace_id, owner)

    async def requeue_expired(self) -> list[Delivery]:
        got = await self._store.requeue_expired(self._now())
        for ws_id in dict.fromkeys(d.workspace_id for d in got):
            await self._announce(ws_id)
        return got

    async def retry(self, delivery_id: str) -> Delivery:
        """An operator's retry of a finished delivery: to the back of the queue."""
        d = await self._store.requeue(
            delivery_id, only_from=RETRYABLE, now=self._now(), reason="retried by an operator"
        )
        if d is None:
            current = await self._store.get_delivery(delivery_id)  # NotFound if none
            raise Conflict(
                f"only a {_names(RETRYABLE)} delivery can be retried; this one is "
                f"{current.status.value}",
                code="not_retryable",
            )
        await self._announce(d.workspace_id)
        return d

    # ending deliveries that were not delivered --------------------------------
    async def cancel(self, delivery_id: str, reason: str) -> Delivery:
        """Cancel a delivery no agent has yet."""
        d = await self._store.finish(
            delivery_id, D.CANCELED, only_from=CANCELABLE, now=self._now(), reason=reason
        )
        if d is None:
            current = await self._store.get_delivery(delivery_id)  # NotFound if none
            raise Conflict(
                f"only a {_names(CANCELABLE)} delivery can be canceled; this one is "
                f"{current.status.value}",
                code="not_cancelable",
            )
        await self._finished(d)
        return d

    async def cancel_pending(self, workspace_id: str, reason: str) -> list[Delivery]:
        """Cancel every delivery of a workspace that is not final (its removal)."""
        got = await self._store.finish_all(
            workspace_id, D.CANCELED, only_from=PENDING, now=self._now(), reason=reason
        )
        for d in got:
            await self._finished(d)
        return got

    async def expire_due(self) -> list[Delivery]:
        got = await self._store.expire_due(self._now())
        for d in got:
            await self._finished(d)
        return got

    async def prune(self, before: float) -> int:
        """Delete finished deliveries older than `before` (retention)."""
        return await self._store.prune_finished(before)
