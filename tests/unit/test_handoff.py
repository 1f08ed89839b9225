"""The owner hand-off (services/handoff.py) over the in-process bus: a lifecycle request
reaches the owner, its answer or error comes back as it was raised, and a silent owner
is a clear 503-class refusal naming it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from berth.adapters.memory_bus import MemoryBus
from berth.domain.errors import Conflict, Unavailable
from berth.domain.workspace import Runtime, Workspace
from berth.services import handoff as handoff_mod
from berth.services.handoff import Handoff


def _ws(owner: str | None, runtime: Runtime = Runtime.PROCESS) -> Workspace:
    now = time.time()
    return Workspace(
        id="w1",
        name="p0",
        token_hash="x",
        created_at=now,
        updated_at=now,
        runtime=runtime,
        owner=owner,
    )


async def test_the_owner_is_asked_only_when_it_is_another_replica():
    bus = MemoryBus()
    shared, alone = Handoff(bus, "a", shared=True), Handoff(bus, "a", shared=False)
    assert shared.owner_elsewhere(_ws("b")) == "b"
    assert shared.owner_elsewhere(_ws("a")) is None
    assert shared.owner_elsewhere(_ws(None)) is None
    assert shared.owner_elsewhere(_ws("b", Runtime.EXTERNAL)) is None  # any replica serves it
    assert alone.owner_elsewhere(_ws("b")) is None  # SQLite: every workspace is ours


async def test_an_ask_runs_on_the_owner_and_its_error_comes_back(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(handoff_mod, "ASK_SECONDS", 0.3)
    bus = MemoryBus()
    await bus.start()
    asker, owner = Handoff(bus, "a", shared=True), Handoff(bus, "b", shared=True)
    ran: list[tuple[str, str, dict[str, Any]]] = []

    async def handler(op: str, ws_id: str, args: dict[str, Any]) -> dict[str, Any]:
        ran.append((op, ws_id, args))
        if op == "pause":
            await asyncio.sleep(0.7)  # longer than ASK_SECONDS: `working` keeps the asker waiting
            return {"paused": True}
        raise Conflict("workspace p0 is removed; it cannot be restarted", code="not_restartable")

    loops = [asyncio.create_task(h.serve(handler)) for h in (asker, owner)]
    await asyncio.sleep(0.01)
    try:
        assert await asker.ask("b", _ws("b"), "pause", {"x": 1}) == {"paused": True}
        with pytest.raises(Conflict) as e:
            await asker.ask("b", _ws("b"), "restart", {})
        assert e.value.code == "not_restartable" and "removed" in e.value.message
        assert ran == [("pause", "w1", {"x": 1}), ("restart", "w1", {})]
        with pytest.raises(Unavailable) as down:
            await asker.ask("c", _ws("c"), "restart", {})  # nobody is replica c
        assert down.value.code == "owner_unavailable" and "replica c" in down.value.message
    finally:
        for t in loops:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await bus.close()
