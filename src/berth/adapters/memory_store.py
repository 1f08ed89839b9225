"""The Store port in memory: reference semantics for the contract tests, and fast unit tests."""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from berth.adapters.accept_claim import AcceptThenClaim
from berth.domain.credentials import Credential
from berth.domain.delivery import FINAL, Delivery, DeliveryStatus, check_move, sources
from berth.domain.errors import Conflict, NotFound
from berth.domain.lifecycle import WorkspaceState, check_missed_move, move_guard
from berth.domain.restart import RestartRecord
from berth.domain.workspace import Workspace
from berth.ports import Pending, Settle

D = DeliveryStatus
_WS_FIELDS = frozenset(f.name for f in fields(Workspace))
__all__ = ["MemoryStore"]


class MemoryStore(AcceptThenClaim):
    def __init__(self) -> None:
        self._ws: dict[str, Workspace] = {}
        self._d: dict[str, Delivery] = {}
        self._by_key: dict[tuple[str, str, str], str] = {}
        self._creds: dict[str, Credential] = {}
        self._restarts: dict[str, RestartRecord] = {}
        self._seq = itertools.count(1)

    async def ping(self) -> None:
        return None

    async def migrate(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # workspaces ------------------------------------------------------------
    async def create_workspace(self, ws: Workspace) -> None:
        if ws.id in self._ws or any(w.name == ws.name for w in self._ws.values()):
            raise Conflict(f"a workspace named {ws.name!r} exists", code="name_taken")
        self._ws[ws.id] = copy.deepcopy(ws)

    async def get_workspace(self, ref: str) -> Workspace:
        ws = self._ws.get(ref) or next((w for w in self._ws.values() if w.name == ref), None)
        if ws is None:
            raise NotFound(f"no workspace {ref!r}", code="workspace_not_found")
        return copy.deepcopy(ws)

    async def changed_workspaces(
        self, seen: Mapping[str, str]
    ) -> tuple[dict[str, str], list[tuple[Workspace, str]]] | None:
        return None  # no row versions kept

    async def list_workspaces(self) -> list[Workspace]:
        return [copy.deepcopy(w) for w in sorted(self._ws.values(), key=lambda w: w.created_at)]

    async def update_workspace(self, ws_id: str, **fields: Any) -> Workspace:
        # Like the SQL adapters: the id is not a field, a state changes only by a move, and
        # every update stamps updated_at.
        if "state" in fields:
            raise AttributeError("state: use move_workspace")
        return self._update(ws_id, fields)

    def _update(self, ws_id: str, fields: dict[str, Any]) -> Workspace:
        for k in fields:
            if k == "id" or k not in _WS_FIELDS:
                raise AttributeError(k)
        ws = self._ws.get(ws_id)
        if ws is None:
            raise NotFound(f"no workspace {ws_id!r}", code="workspace_not_found")
        for k, v in {"updated_at": time.time(), **fields}.items():
            setattr(ws, k, copy.deepcopy(v))
        return copy.deepcopy(ws)

    async def move_workspace(
        self,
        ws_id: str,
        to: WorkspaceState,
        *,
        only_from: frozenset[WorkspaceState] | None = None,
        **fields: Any,
    ) -> Workspace | None:
        for k in fields:
            if k in ("id", "state") or k not in _WS_FIELDS:
                raise AttributeError(k)
        ws = self._ws.get(ws_id)
        if ws is None or ws.state not in move_guard(to, only_from):
            check_missed_move(None if ws is None else ws.state, to, only_from)
            return None
        return self._update(ws_id, {**fields, "state": to})

    async def delete_workspace(self, ws_id: str) -> None:
        self._ws.pop(ws_id, None)

    async def workspace_by_run_token(self, token_hash: str) -> Workspace | None:
        for w in self._ws.values():
            if token_hash in (w.run_token_hash, w.peer_run_token_hash):
                return copy.deepcopy(w)
        return None

    async def record_heartbeats(self, beats: dict[str, float]) -> None:
        for ws_id, at in beats.items():
            ws = self._ws.get(ws_id)
            if ws is not None:
                ws.last_heartbeat = max(ws.last_heartbeat or 0.0, at)

    async def last_heartbeats(self) -> dict[str, float]:
        return {w.id: w.last_heartbeat for w in self._ws.values() if w.last_heartbeat is not None}

    # credentials -----------------------------------------------------------
    async def add_credential(self, cred: Credential) -> None:
        if any(c.subject == cred.subject for c in self._creds.values()):
            raise Conflict(f"a credential {cred.subject!r} exists", code="credential_exists")
        self._creds[cred.id] = copy.deepcopy(cred)

    async def credential_by_secret(self, secret_hash: str) -> Credential | None:
        for c in self._creds.values():
            if c.secret_hash == secret_hash:
                return copy.deepcopy(c)
        return None

    async def get_credential(self, ref: str) -> Credential:
        c = self._creds.get(ref) or next(
            (c for c in self._creds.values() if c.subject == ref), None
        )
        if c is None:
            raise NotFound(f"no credential {ref!r}", code="credential_not_found")
        return copy.deepcopy(c)

    async def list_credentials(self) -> list[Credential]:
        return [copy.deepcopy(c) for c in sorted(self._creds.values(), key=lambda c: c.created_at)]

    async def update_credential(self, cred_id: str, **fields: Any) -> Credential:
        c = self._creds.get(cred_id)
        if c is None:
            raise NotFound(f"no credential {cred_id!r}", code="credential_not_found")
        for k, v in fields.items():
            if k not in ("secret_hash", "rotated_at", "revoked_at"):
                raise AttributeError(k)
            setattr(c, k, v)
        return copy.deepcopy(c)

    async def delete_credentials(self, workspace_id: str) -> None:
        for cid in [i for i, c in self._creds.items() if c.workspace_id == workspace_id]:
            del self._creds[cid]

    async def credentials_version(self) -> int | None:
        return None  # one process: its own writes are all there are

    # deliveries ------------------------------------------------------------
    async def accept(self, d: Delivery) -> tuple[Delivery, bool]:
        key = (d.workspace_id, d.caller, d.message_id)
        if key in self._by_key:
            return copy.deepcopy(self._d[self._by_key[key]]), False
        stored = replace(copy.deepcopy(d), seq=next(self._seq))  # the caller keeps its own copy
        self._d[d.id] = stored
        self._by_key[key] = d.id
        return copy.deepcopy(stored), True

    async def get_delivery(self, delivery_id: str) -> Delivery:
        d = self._d.get(delivery_id)
        if d is None:
            raise NotFound(f"no delivery {delivery_id!r}", code="delivery_not_found")
        return copy.deepcopy(d)

    async def find_delivery(
        self, workspace_id: str, message_id: str, caller: str | None = None
    ) -> Delivery | None:
        got = [
            self._d[did]
            for (ws, who, mid), did in self._by_key.items()
            if ws == workspace_id and mid == message_id and caller in (None, who)
        ]
        return copy.deepcopy(min(got, key=lambda d: d.seq)) if got else None

    def _of(self, workspace_id: str | None, status: DeliveryStatus | None = None) -> list[Delivery]:
        return sorted(
            (
                d
                for d in self._d.values()
                if (workspace_id is None or d.workspace_id == workspace_id)
                and (status is None or d.status is status)
            ),
            key=lambda d: d.seq,
        )

    async def claim(
        self,
        workspace_id: str,
        *,
        capacity: int | None,
        owner: str,
        lease_seconds: float,
        now: float,
    ) -> list[Delivery]:
        room = None if capacity is None else capacity - len(self._of(workspace_id, D.IN_FLIGHT))
        if room is not None and room <= 0:
            return []
        out: list[Delivery] = []
        for d in self._of(workspace_id, D.QUEUED):
            if room is not None and len(out) >= room:
                break
            if d.not_before > now:
                continue
            d.status, d.lease_owner, d.lease_until = D.IN_FLIGHT, owner, now + lease_seconds
            d.forwards += 1
            if d.first_forwarded_at is None:
                d.first_forwarded_at = now
            d.updated_at = now
            out.append(copy.deepcopy(d))
        return out

    async def renew(self, owner: str, ids: list[str], lease_until: float) -> int:
        n = 0
        for i in dict.fromkeys(ids):  # a repeated id counts once, as in SQL
            d = self._d.get(i)
            if d is not None and d.status is D.IN_FLIGHT and d.lease_owner == owner:
                d.lease_until = lease_until
                n += 1
        return n

    async def settle(
        self, delivery_id: str, owner: str, how: Settle, now: float
    ) -> Delivery | None:
        check_move(D.IN_FLIGHT, how.status)  # a wrong settle is a bug even when nothing matches
        d = self._d.get(delivery_id)
        if d is None or d.status is not D.IN_FLIGHT or d.lease_owner != owner:
            return None
        if how.forward is not None and d.forwards != how.forward:
            return None  # a later attempt holds it
        d.status = how.status
        d.attempts += 1 if how.count_attempt else 0
        if how.reply is not None:
            d.reply, d.reply_status = how.reply, how.reply_status
            d.reply_type = how.reply_type
        d.reason = how.reason
        d.not_before = how.not_before
        d.lease_owner = d.lease_until = None
        d.updated_at = now
        d.finished_at = now if how.status in FINAL else None
        return copy.deepcopy(d)

    async def requeue_in_flight(self, workspace_id: str | None = None) -> list[str]:
        out = []
        for d in self._of(workspace_id, D.IN_FLIGHT):
            d.status, d.lease_owner, d.lease_until = D.QUEUED, None, None
            out.append(d.id)
        return out

    async def release_leases(self, owner: str) -> list[Delivery]:
        out = []
        for d in self._of(None, D.IN_FLIGHT):
            if d.lease_owner == owner:
                d.status, d.lease_owner, d.lease_until = D.QUEUED, None, None
                d.reason = "released by a stopping replica: redelivered"
                out.append(copy.deepcopy(d))
        return out

    async def take_lease(self, delivery_id: str, from_owner: str, to_owner: str) -> Delivery | None:
        d = self._d.get(delivery_id)
        if d is None or d.status is not D.IN_FLIGHT or d.lease_owner != from_owner:
            return None
        d.lease_owner = to_owner
        return copy.deepcopy(d)

    async def leased(self, workspace_id: str, owner: str) -> list[str]:
        return [d.id for d in self._of(workspace_id, D.IN_FLIGHT) if d.lease_owner == owner]

    async def requeue_expired(self, now: float) -> list[Delivery]:
        out = []
        for d in self._of(None, D.IN_FLIGHT):
            if d.lease_until is not None and d.lease_until < now:
                d.status, d.lease_owner, d.lease_until = D.QUEUED, None, None
                d.reason = "lease expired: redelivered"
                out.append(copy.deepcopy(d))
        return out

    def _finish(self, d: Delivery, to: DeliveryStatus, now: float, reason: str) -> Delivery:
        d.status, d.reason, d.finished_at, d.updated_at = to, reason, now, now
        d.lease_owner = d.lease_until = None
        return copy.deepcopy(d)

    async def finish(
        self,
        delivery_id: str,
        to: DeliveryStatus,
        *,
        only_from: frozenset[DeliveryStatus],
        now: float,
        reason: str,
    ) -> Delivery | None:
        d = self._d.get(delivery_id)
        if d is None or d.status not in only_from:
            return None
        return self._finish(d, to, now, reason)

    async def finish_all(
        self,
        workspace_id: str,
        to: DeliveryStatus,
        *,
        only_from: frozenset[DeliveryStatus],
        now: float,
        reason: str,
    ) -> list[Delivery]:
        return [
            self._finish(d, to, now, reason)
            for d in self._of(workspace_id)
            if d.status in only_from
        ]

    async def requeue(
        self,
        delivery_id: str,
        *,
        only_from: frozenset[DeliveryStatus],
        now: float,
        reason: str,
    ) -> Delivery | None:
        d = self._d.get(delivery_id)
        if d is None or d.status not in only_from:
            return None
        d.status, d.attempts, d.reason, d.finished_at = D.QUEUED, 0, reason, None
        d.not_before, d.updated_at, d.seq = 0.0, now, next(self._seq)
        return copy.deepcopy(d)

    async def expire_due(self, now: float) -> list[Delivery]:
        out = []
        for d in self._of(None):
            if d.status in sources(D.EXPIRED) and d.expires_at is not None and d.expires_at <= now:
                d.status, d.reason, d.finished_at, d.updated_at = D.EXPIRED, "ttl passed", now, now
                out.append(copy.deepcopy(d))
        return out

    async def list_deliveries(
        self,
        workspace_id: str,
        status: DeliveryStatus | None = None,
        limit: int = 100,
    ) -> list[Delivery]:
        return [copy.deepcopy(d) for d in self._of(workspace_id, status)[-limit:]]

    async def pending(self, workspace_id: str) -> tuple[int, int]:
        mine = self._of(workspace_id)
        return (
            sum(d.status is DeliveryStatus.QUEUED for d in mine),
            sum(d.status is DeliveryStatus.IN_FLIGHT for d in mine),
        )

    async def queue_head(self, workspace_id: str) -> float | None:
        queued = self._of(workspace_id, D.QUEUED)
        return queued[0].created_at if queued else None

    async def backlogs(self) -> dict[str, Pending]:
        out: dict[str, Pending] = {}
        for d in self._of(None):  # by seq: the first queued one seen is the head
            if d.status not in (D.QUEUED, D.IN_FLIGHT):
                continue
            p = out.get(d.workspace_id, Pending(0, 0, None))
            if d.status is D.QUEUED:
                head = d.created_at if p.head is None else p.head
                p = Pending(p.queued + 1, p.in_flight, head)
            else:
                p = Pending(p.queued, p.in_flight + 1, p.head)
            out[d.workspace_id] = p
        return out

    async def prune_finished(self, before: float) -> int:
        gone = [
            d
            for d in self._d.values()
            if d.status in FINAL and d.finished_at is not None and d.finished_at < before
        ]
        for d in gone:
            del self._d[d.id]
            del self._by_key[(d.workspace_id, d.caller, d.message_id)]
        return len(gone)

    # restarts --------------------------------------------------------------
    async def save_restart(self, r: RestartRecord) -> None:
        self._restarts[r.id] = copy.deepcopy(r)

    async def get_restart(self, workspace_id: str, restart_id: str) -> RestartRecord:
        r = self._restarts.get(restart_id)
        if r is None or r.workspace_id != workspace_id:
            raise NotFound(f"no restart {restart_id!r}", code="restart_not_found")
        return copy.deepcopy(r)

    async def list_restarts(self, workspace_id: str, limit: int = 50) -> list[RestartRecord]:
        rs = [r for r in self._restarts.values() if r.workspace_id == workspace_id]
        return [
            copy.deepcopy(r) for r in sorted(rs, key=lambda r: r.created_at, reverse=True)[:limit]
        ]

    async def active_restart(self, workspace_id: str) -> RestartRecord | None:
        rs = [
            r for r in self._restarts.values() if r.workspace_id == workspace_id and not r.finished
        ]
        return copy.deepcopy(max(rs, key=lambda r: r.created_at)) if rs else None
