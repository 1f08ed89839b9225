"""Mapping between table rows and domain objects, shared by every SQL dialect."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import orjson

from berth.domain.credentials import Credential, Role
from berth.domain.delivery import Delivery, DeliveryStatus
from berth.domain.deploy import Instance
from berth.domain.errors import NotFound
from berth.domain.lifecycle import WorkspaceState, check_missed_move, move_guard
from berth.domain.restart import FINISHED, Phase, PhaseTiming, RestartRecord, Trigger
from berth.domain.workspace import RestartPolicy, Runtime, Workspace

WS_JSON = {"command", "env", "limits", "agent_card", "capabilities", "allowed_callers"}
WS_ENUMS: dict[str, Any] = {
    "runtime": Runtime,
    "restart_policy": RestartPolicy,
    "state": WorkspaceState,
}
WS_COLUMNS = [
    "id",
    "name",
    "runtime",
    "command",
    "image",
    "url",
    "env",
    "max_concurrency",
    "drain_seconds",
    "restart_policy",
    "limits",
    "state",
    "token_hash",
    "run_token_hash",
    "agent_url",
    "agent_card",
    "capabilities",
    "last_heartbeat",
    "active_tasks",
    "restart_count",
    "crash_count",
    "pid",
    "state_dir",
    "owner",
    "last_error",
    "allowed_callers",
    "created_at",
    "updated_at",
    "card_access",
    "version",
    "peer",
    "peer_run_token_hash",
]
D_COLUMNS = [
    "id",
    "workspace_id",
    "caller",
    "message_id",
    "fingerprint",
    "method",
    "request",
    "headers",
    "status",
    "attempts",
    "forwards",
    "reply",
    "reply_status",
    "reply_type",
    "reason",
    "lease_owner",
    "lease_until",
    "not_before",
    "expires_at",
    "created_at",
    "first_forwarded_at",
    "finished_at",
    "updated_at",
]
R_COLUMNS = [
    "id",
    "workspace_id",
    "trigger",
    "reason",
    "drain_seconds",
    "phase",
    "phases",
    "drain_report",
    "error",
    "created_at",
    "finished_at",
    "mode",
    "versions",
]


def ws_value(column: str, value: Any) -> Any:
    if column == "peer":
        return None if value is None else json.dumps(value.to_dict())
    if column in WS_JSON:
        return None if value is None else json.dumps(value)
    if column in WS_ENUMS and value is not None:
        return value.value
    return value


def ws_params(ws: Workspace) -> dict[str, Any]:
    return {c: ws_value(c, getattr(ws, c)) for c in WS_COLUMNS}


def _loads(v: str | bytes) -> Any:
    try:
        return orjson.loads(v)
    except orjson.JSONDecodeError:  # what json.dumps writes and orjson refuses (NaN, huge ints)
        return json.loads(v)


def _peer(v: str | bytes) -> Instance:
    return Instance.from_dict(_loads(v))


# the columns read back as something else than the driver gives, and how (None stays None)
_WS_DECODE: tuple[tuple[str, Any], ...] = (
    *((c, WS_ENUMS[c]) for c in WS_COLUMNS if c in WS_ENUMS),
    *((c, _loads) for c in WS_COLUMNS if c in WS_JSON),
    ("peer", _peer),
)


def ws_from_row(row: Mapping[str, Any]) -> Workspace:
    """A workspace from its row (~8-10 us: listing 1,000 workspaces on PostgreSQL reads
    them all; json.loads per JSON column made it ~20-35 us a row)."""
    kw = {c: row[c] for c in WS_COLUMNS}
    for c, decode in _WS_DECODE:
        v = kw[c]
        if v is not None:
            kw[c] = decode(v)
    kw["env"] = kw["env"] or {}
    kw["limits"] = kw["limits"] or {}
    kw["capabilities"] = kw["capabilities"] or {}
    kw["allowed_callers"] = kw["allowed_callers"] or []
    return Workspace(**kw)


def d_values(d: Delivery) -> tuple[Any, ...]:
    """d_params' values in D_COLUMNS order, for positional binding."""
    return (
        d.id,
        d.workspace_id,
        d.caller,
        d.message_id,
        d.fingerprint,
        d.method,
        d.request,
        orjson.dumps(d.headers).decode(),
        d.status.value,
        d.attempts,
        d.forwards,
        d.reply,
        d.reply_status,
        d.reply_type,
        d.reason,
        d.lease_owner,
        d.lease_until,
        d.not_before,
        d.expires_at,
        d.created_at,
        d.first_forwarded_at,
        d.finished_at,
        d.updated_at,
    )


def d_params(d: Delivery) -> dict[str, Any]:
    out = {c: getattr(d, c) for c in D_COLUMNS}
    out["headers"] = orjson.dumps(d.headers).decode()
    out["status"] = d.status.value
    return out


def d_from_row(row: Mapping[str, Any]) -> Delivery:
    kw = {c: row[c] for c in D_COLUMNS}
    kw["headers"] = orjson.loads(kw["headers"] or "{}")
    kw["status"] = DeliveryStatus(kw["status"])
    kw["request"] = bytes(kw["request"])
    kw["reply"] = None if kw["reply"] is None else bytes(kw["reply"])
    return Delivery(seq=row["seq"], **kw)


C_COLUMNS = [
    "id",
    "subject",
    "role",
    "workspace_id",
    "secret_hash",
    "created_at",
    "rotated_at",
    "revoked_at",
]


def c_params(c: Credential) -> dict[str, Any]:
    out = {k: getattr(c, k) for k in C_COLUMNS}
    out["role"] = c.role.value
    return out


def c_from_row(row: Mapping[str, Any]) -> Credential:
    kw = {k: row[k] for k in C_COLUMNS}
    kw["role"] = Role(kw["role"])
    return Credential(**kw)


def r_params(r: RestartRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "workspace_id": r.workspace_id,
        "trigger": r.trigger.value,
        "reason": r.reason,
        "drain_seconds": r.drain_seconds,
        "phase": r.phase.value,
        "phases": json.dumps(
            [
                {
                    "phase": p.phase.value,
                    "started_at": p.started_at,
                    "ended_at": p.ended_at,
                    "detail": p.detail,
                }
                for p in r.phases
            ]
        ),
        "drain_report": None if r.drain_report is None else json.dumps(r.drain_report),
        "error": r.error,
        "created_at": r.created_at,
        "finished_at": r.finished_at,
        "mode": r.mode,
        "versions": None if r.versions is None else json.dumps(r.versions),
    }


def r_from_row(row: Mapping[str, Any]) -> RestartRecord:
    phases = [
        PhaseTiming(Phase(p["phase"]), p["started_at"], p["ended_at"], p.get("detail"))
        for p in json.loads(row["phases"] or "[]")
    ]
    return RestartRecord(
        id=row["id"],
        workspace_id=row["workspace_id"],
        trigger=Trigger(row["trigger"]),
        reason=row["reason"],
        drain_seconds=row["drain_seconds"],
        phase=Phase(row["phase"]),
        phases=phases,
        drain_report=None if row["drain_report"] is None else json.loads(row["drain_report"]),
        error=row["error"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        mode=row["mode"],
        versions=None if row["versions"] is None else json.loads(row["versions"]),
    )


def sql_set(values: frozenset[DeliveryStatus] | frozenset[WorkspaceState]) -> str:
    """A set of statuses as an SQL list literal, e.g. `('dead', 'expired')`. The statuses
    come from the domain's rules (FINAL, RETRYABLE, move_guard ...), never typed here;
    literals rather than parameters, so that SQLite can match partial indexes."""
    if not values:
        return "(NULL)"
    first = next(iter(values))
    kind = DeliveryStatus if isinstance(first, DeliveryStatus) else WorkspaceState
    names = [m.value for m in kind if m in values]  # in the enum's order, as the indexes are
    return "(" + ", ".join(f"'{n}'" for n in names) + ")"


def single(values: frozenset[DeliveryStatus]) -> str:
    """The one status of a rule that has one, for `status = '…'` (which a partial index
    can match where `IN (…)` cannot); a rule that grows a second status fails here."""
    (only,) = values
    return only.value


QUEUED = DeliveryStatus.QUEUED.value
IN_FLIGHT = DeliveryStatus.IN_FLIGHT.value
EXPIRED = DeliveryStatus.EXPIRED.value
RESTART_FINISHED = "(" + ", ".join(sorted(f"'{p.value}'" for p in FINISHED)) + ")"


def ws_update(fields: dict[str, Any]) -> dict[str, Any]:
    """The columns an update writes: `updated_at` unless given; unknown columns (and the id)
    are a programming error, and so is `state` (a state changes by move_workspace)."""
    fields = {"updated_at": time.time(), **fields}
    for k in fields:
        if k not in WS_COLUMNS or k in ("id", "state"):
            raise AttributeError(k)
    return fields


class WorkspaceUpdates:
    """update_workspace / move_workspace of both SQL stores, over their `_update_ws`
    (which writes `fields`, conditionally on the state being in `only_from` when given)."""

    async def _update_ws(
        self,
        ws_id: str,
        only_from: frozenset[WorkspaceState] | None,
        fields: dict[str, Any],
    ) -> Workspace | None:
        raise NotImplementedError

    async def get_workspace(self, ref: str) -> Workspace:
        raise NotImplementedError

    async def update_workspace(self, ws_id: str, **fields: Any) -> Workspace:
        ws = await self._update_ws(ws_id, None, ws_update(fields))
        if ws is None:
            raise NotFound(f"no workspace {ws_id!r}", code="workspace_not_found")
        return ws

    async def move_workspace(
        self,
        ws_id: str,
        to: WorkspaceState,
        *,
        only_from: frozenset[WorkspaceState] | None = None,
        **fields: Any,
    ) -> Workspace | None:
        update = {**ws_update(fields), "state": to}
        moved = await self._update_ws(ws_id, move_guard(to, only_from), update)
        if moved is None:
            try:
                current = (await self.get_workspace(ws_id)).state
            except NotFound:
                return None
            check_missed_move(current, to, only_from)
        return moved
