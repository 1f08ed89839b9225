"""The server's account of what happens: one log line per workspace state change, restart
phase and dead letter, and the recent events for `GET /v1/events/recent`.

It follows the event bus like any other listener; lines are logged by the replica the event
comes from, so several replicas do not repeat each other's lines.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

from berth.bootstrap import Container
from berth.ports import Subscription
from berth.services.events import BATCH_TOPIC, EVENT_TOPIC, unpack

__all__ = ["EventLog"]
log = logging.getLogger("berth.events")

QUIET = frozenset({"workspace.crashed"})  # the registry logs crashes itself
LOGGED = frozenset(
    {
        "workspace.state",
        "workspace.created",
        "workspace.removed",
        "restart.requested",
        "restart.phase",
        "restart.finished",
        "delivery.dead",
        "delivery.expired",
        "delivery.canceled",
    }
)


class EventLog:
    def __init__(self, c: Container, keep: int = 1000) -> None:
        self._c = c
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._restarts: dict[str, float] = {}  # restart id -> when requested (monotonic)
        self._phases: dict[str, tuple[str, float]] = {}  # restart id -> (phase, since)

    def since(self, workspace_id: str | None, limit: int) -> list[dict[str, Any]]:
        items = [
            e for e in self.recent if workspace_id is None or e.get("workspace_id") == workspace_id
        ]
        return items[-limit:]

    def start(self) -> asyncio.Task[None]:
        """Subscribe now (before the container starts, to see its recovery), follow in a task."""
        return asyncio.create_task(
            self._follow(self._c.bus.subscribe(EVENT_TOPIC + "*")), name="event-log"
        )

    async def _follow(self, sub: Subscription) -> None:
        try:
            async for topic, payload in sub:
                flow = topic == BATCH_TOPIC  # accepted/forwarded/done: too many to log
                for kind, data in unpack(topic, payload):
                    # a flow event carries its kind already (Events.flow): kept as it came
                    event = data if flow else {**data, "kind": kind}
                    self.recent.append(event)
                    if not flow and data.get("replica") in (None, self._c.settings.replica):
                        try:
                            self.write(event)
                        except Exception:  # noqa: BLE001 - a log line must never stop the server
                            log.debug("could not log event %s", event, exc_info=True)
        finally:
            await sub.aclose()

    def _name(self, e: dict[str, Any]) -> str:
        if e.get("name"):
            return str(e["name"])
        ws = self._c.roster.peek(str(e.get("workspace_id")))
        return ws.name if ws is not None else str(e.get("workspace_id"))[:12]

    def write(self, e: dict[str, Any]) -> None:
        kind = e["kind"]
        if kind in QUIET or (kind not in LOGGED and not log.isEnabledFor(logging.DEBUG)):
            return  # per-message events: cheap to skip on the hot path
        name = self._name(e)
        extra = {"event": e}
        rid = str(e.get("restart_id") or "")[:8]
        if kind == "workspace.state":
            level, msg = logging.INFO, f"workspace {name}: {e.get('previous')} -> {e.get('state')}"
            if e.get("state") == "failed":
                ws = self._c.roster.peek(str(e.get("workspace_id")))
                level = logging.WARNING
                msg += f" ({ws.last_error if ws is not None and ws.last_error else 'no reason'})"
            log.log(level, msg, extra=extra)
        elif kind == "restart.requested":
            self._restarts[str(e.get("restart_id"))] = time.monotonic()
            why = f": {e['reason']}" if e.get("reason") else ""
            log.info(
                "restart %s of %s requested (%s%s)", rid, name, e.get("trigger"), why, extra=extra
            )
        elif kind == "restart.phase":
            prev = self._phases.get(str(e.get("restart_id")))
            self._phases[str(e.get("restart_id"))] = (str(e.get("phase")), time.monotonic())
            after = "" if prev is None else f" ({prev[0]} took {time.monotonic() - prev[1]:.2f} s)"
            log.info("restart %s of %s: %s%s", rid, name, e.get("phase"), after, extra=extra)
        elif kind == "restart.finished":
            self._phases.pop(str(e.get("restart_id")), None)
            t0 = self._restarts.pop(str(e.get("restart_id")), None)
            took = "" if t0 is None else f" in {time.monotonic() - t0:.2f} s"
            if e.get("phase") == "failed":
                log.warning(
                    "restart %s of %s failed%s: %s", rid, name, took, e.get("error"), extra=extra
                )
            else:
                log.info(
                    "restart %s of %s %s%s%s",
                    rid,
                    name,
                    e.get("phase"),
                    took,
                    _drain(e),
                    extra=extra,
                )
        elif kind == "delivery.dead":
            log.warning(
                "dead letter: message %s to %s (delivery %s): %s",
                e.get("message_id"),
                name,
                e.get("delivery_id"),
                e.get("reason"),
                extra=extra,
            )
        elif kind in ("delivery.expired", "delivery.canceled"):
            log.info(
                "message %s to %s %s: %s",
                e.get("message_id"),
                name,
                kind.split(".")[1],
                e.get("reason"),
                extra=extra,
            )
        elif kind in ("workspace.created", "workspace.removed"):
            log.info("workspace %s %s", name, kind.split(".")[1], extra=extra)
        else:  # registrations, and per-message events: too many for INFO
            log.debug("%s %s", kind, name, extra=extra)


def _drain(e: dict[str, Any]) -> str:
    rep = e.get("drain_report")
    if not isinstance(rep, dict):
        return ""
    return (
        f" (drain by the {rep.get('mode')}: {len(rep.get('completed') or [])} completed, "
        f"{len(rep.get('unfinished') or [])} unfinished)"
    )
