"""`accept_claim` as two steps, for stores without a one-transaction form (the in-memory
store; SQLite and PostgreSQL have one): accept, then claim when the accept created the
delivery. A crash between them leaves the delivery queued, to be claimed as any other."""

from __future__ import annotations

from typing import Protocol

from berth.domain.delivery import Delivery

__all__ = ["AcceptThenClaim"]


class _Steps(Protocol):
    async def accept(self, d: Delivery) -> tuple[Delivery, bool]: ...
    async def claim(
        self,
        workspace_id: str,
        *,
        capacity: int | None,
        owner: str,
        lease_seconds: float,
        now: float,
    ) -> list[Delivery]: ...


class AcceptThenClaim:
    async def accept_claim(
        self: _Steps,
        d: Delivery,
        *,
        capacity: int | None,
        owner: str,
        lease_seconds: float,
        now: float,
    ) -> tuple[Delivery, bool, list[Delivery]]:
        stored, created = await self.accept(d)
        if not created:
            return stored, False, []
        got = await self.claim(
            d.workspace_id, capacity=capacity, owner=owner, lease_seconds=lease_seconds, now=now
        )
        return next((g for g in got if g.id == stored.id), stored), True, got
