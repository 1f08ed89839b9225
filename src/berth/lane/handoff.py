"""A hand-off: the fast lane's forward ended in something other than a reply it may
settle itself (a DRAINING refusal, another answer, a reset, a timeout, no connection).
Python takes the delivery's lease over from the lane, settles the outcome as its own
dispatcher would, and answers the lane's caller as for an original send."""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, replace

import orjson

from berth.domain.delivery import Delivery, Outcome
from berth.domain.errors import InvalidInput
from berth.metrics import Metrics
from berth.ports import AgentReply
from berth.services.bindings import JsonRpc, ProxyReply
from berth.services.delivery_log import DeliveryLog
from berth.services.dispatcher import Dispatcher
from berth.services.proxy import Proxy
from berth.services.replies import classify
from berth.services.roster import Roster

log = logging.getLogger("berth.lane")
__all__ = ["Handed", "LaneHandoff"]

FAILED = {"transport": Outcome.TRANSPORT, "unreached": Outcome.UNREACHED}


@dataclass(frozen=True)
class Handed:
    """What the lane hands over: its attempt's outcome and the caller's remaining wait."""

    delivery_id: str
    outcome: str  # reply, transport or unreached
    status: int | None = None  # the agent's HTTP status (reply)
    content_type: str | None = None
    detail: str | None = None
    wait: float = 0.0  # seconds the caller may still wait; 0: no caller
    body: bytes = b""  # the agent's answer (reply)
    # the workspace as the lane read it for this forward (None: not told, the record now):
    # the run it went to ("" when it had no run token) and its crash count then
    run: str | None = None
    crashes: int | None = None


class LaneHandoff:
    def __init__(
        self,
        deliveries: DeliveryLog,
        dispatcher: Dispatcher,
        roster: Roster,
        proxy: Proxy,
        metrics: Metrics,
        *,
        owner: str,
        secret: str,
    ) -> None:
        self._metrics = metrics
        self._log, self._dispatcher, self._roster, self._proxy = (
            deliveries,
            dispatcher,
            roster,
            proxy,
        )
        self.owner = owner  # the lane's lease owner
        self._secret = secret.encode()

    def admits(self, secret: str | None) -> bool:
        """The request comes from this berth's lane (it alone knows the secret)."""
        return secret is not None and hmac.compare_digest(secret.encode(), self._secret)

    async def take(self, h: Handed) -> ProxyReply:
        outcome, body, status, ctype, detail = _outcome(h)
        first = self._log.expect(h.delivery_id) if h.wait > 0 else None
        try:
            try:
                d = await self._log.take_lease(h.delivery_id, self.owner)
                if d is not None:
                    self._adopt(h, d, outcome, body, status, ctype, detail)
            finally:  # the lane's forward is over whatever happens here (a failed take
                # leaves the row to its lease, which the lane no longer renews)
                self._dispatcher.lane.ended(h.delivery_id)
            if d is None:  # a restart requeued it, or its lease ran out: its answer, then
                d = await self._log.get(h.delivery_id)
        except BaseException:
            if first is not None:
                self._log.drop(h.delivery_id, first)
            raise
        how = JsonRpc(_request_id(d))
        return await self._proxy.answer(d, how, h.wait, first=first, original=True)

    def _adopt(
        self,
        h: Handed,
        d: Delivery,
        outcome: Outcome,
        body: bytes | None,
        status: int | None,
        ctype: str | None,
        detail: str | None,
    ) -> None:
        ws = self._roster.peek(d.workspace_id)
        if ws is None:  # removed meanwhile: its removal cancels what it had pending
            log.warning("fast lane: handed %s of a workspace berth no longer knows", d.id)
            return
        # judged against the run it went to, as Python's own forward is (the workspace as
        # it was when the forward started): a crash since counts, a DRAINING refusal is
        # that run's
        if h.run is not None:
            ws = replace(ws, run_token_hash=h.run or None)
        if h.crashes is not None:
            ws = replace(ws, crash_count=h.crashes)
        self._metrics.inc("berth_lane_handoffs_total", workspace=ws.name, outcome=outcome.value)
        self._dispatcher.adopt(ws, d, outcome, body, status, detail, ctype)


def _outcome(
    h: Handed,
) -> tuple[Outcome, bytes | None, int | None, str | None, str | None]:
    """(outcome, body, status, content type, detail) as the dispatcher's forward has them."""
    if h.outcome == "reply":
        if h.status is None:
            raise InvalidInput("a reply hand-off needs x-berth-lane-status")
        ctype = h.content_type or "application/json"
        outcome = classify(AgentReply(h.status, h.body, ctype))
        return outcome, h.body, h.status, ctype, h.detail or f"HTTP {h.status}"
    if h.outcome in FAILED:
        return FAILED[h.outcome], None, None, None, h.detail or h.outcome
    raise InvalidInput(f"x-berth-lane-outcome: reply, transport or unreached, not {h.outcome!r}")


def _request_id(d: Delivery) -> object:
    try:
        doc = orjson.loads(d.request)
    except orjson.JSONDecodeError:
        return None
    return doc.get("id") if isinstance(doc, dict) else None
