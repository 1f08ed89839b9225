"""What lets one berth hold many workspaces, at the service layer: heartbeats at a rate
that scales, kept in memory and flushed; liveness that sees beats other replicas stored;
dispatcher loops that end when idle, with one sweep finding work a lost wake-up missed."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from berth.adapters.memory_store import MemoryStore
from berth.domain.credentials import hash_secret
from berth.domain.delivery import Delivery
from berth.domain.delivery import DeliveryStatus as D
from berth.domain.lifecycle import WorkspaceState as S
from berth.ports import BUS_GAP
from berth.services.heartbeats import Heartbeats
from berth.services.roster import Roster
from tests.contract.test_store import make_ws
from tests.service.fakes import world


async def _external(w, name: str):  # type: ignore[no-untyped-def]
    """An external workspace whose agent registered (fake agents never beat by themselves)."""
    ws, secrets = await w.c.workspaces.create({"name": name, "runtime": "external"})
    token = secrets["agent_token"]  # an external agent registers with its agent credential
    # on loopback: the agent URL policy refuses other addresses by default
    await w.c.registry.register(token, {"url": f"http://127.0.0.1/{name}.agent"})
    assert (await w.c.roster.get(ws.id)).state is S.ONLINE
    return ws, token


async def test_the_interval_asked_grows_with_the_workspaces_and_liveness_with_it() -> None:
    store = MemoryStore()
    roster = Roster(store)
    beats = Heartbeats(store, roster, seconds=2.0, rate=50.0, timeout=10.0)
    for i in range(40):
        roster.put(make_ws(f"w{i}"))
    assert beats.interval() == 2.0 and beats.timeout_for("x") == 10.0
    for i in range(40, 1000):
        roster.put(make_ws(f"w{i}"))
    assert beats.interval() == 20.0  # 1,000 agents at 50 beats/s together
    assert beats.timeout_for("never-told") == 60.0
    one = roster.all()[0].id
    assert beats.told(one) == 20.0
    for ws in roster.all()[500:]:
        roster.drop(ws.id)
    assert beats.interval() == 10.0
    assert beats.timeout_for(one) == 60.0  # its agent sleeps the 20 s it was told last
    assert beats.told(one) == 10.0 and beats.timeout_for(one) == 30.0


async def test_a_beat_reaches_the_store_at_the_flush_and_a_failed_flush_keeps_it() -> None:
    async with world(heartbeat_seconds=30.0) as w:  # no liveness pass during the test
        ws, token = await _external(w, "beats")
        registered = (await w.store.get_workspace(ws.id)).last_heartbeat
        before = time.time()
        got = await w.c.registry.heartbeat(token, {"active_tasks": 0})
        assert got == {"ok": True, "reregister": False, "heartbeat_seconds": 30.0}
        assert (await w.store.get_workspace(ws.id)).last_heartbeat == registered
        assert (w.c.roster.peek(ws.id).last_heartbeat or 0) >= before  # type: ignore[union-attr]
        flush = w.store.record_heartbeats

        async def away(beats: dict[str, float]) -> None:
            raise ConnectionError("store away")

        w.store.record_heartbeats = away  # type: ignore[method-assign]
        try:
            await w.c.heartbeats.flush()
        except ConnectionError:
            pass
        w.store.record_heartbeats = flush  # type: ignore[method-assign]
        await w.c.heartbeats.flush()
        stored = (await w.store.get_workspace(ws.id)).last_heartbeat
        assert stored is not None and stored >= before
        # a change beyond the time is written at once
        await w.c.registry.heartbeat(token, {"active_tasks": 2})
        assert (await w.store.get_workspace(ws.id)).active_tasks == 2


async def test_an_external_agent_s_beat_reads_the_store_at_most_once() -> None:
    """Its agent credential is looked up first, and kept (services/credential_cache: a
    read per beat was the idle cost of many external workspaces); a run token this replica
    has not seen yet is still found."""
    async with world(heartbeat_seconds=30.0) as w:
        ws, token = await _external(w, "reads")
        reads: list[str] = []
        for name in ("credential_by_secret", "workspace_by_run_token", "get_workspace"):
            real = getattr(w.store, name)

            async def counted(*a: Any, _real: Any = real, _name: str = name) -> Any:
                reads.append(_name)
                return await _real(*a)

            setattr(w.store, name, counted)
        await w.c.registry.heartbeat(token, {"active_tasks": 0})
        assert reads == []  # kept since the agent registered with it
        w.c.access.cache.forget()  # as a credential write on this replica does
        for _ in range(3):
            await w.c.registry.heartbeat(token, {"active_tasks": 0})
        assert reads == ["credential_by_secret"]
        # a run token known to the store but not to this replica's roster (a start elsewhere)
        run = "run-token-" + uuid.uuid4().hex
        await w.store.update_workspace(ws.id, run_token_hash=hash_secret(run))
        reads.clear()
        got = await w.c.access.agent(run)
        assert got.id == ws.id and reads == ["credential_by_secret", "workspace_by_run_token"]


async def test_liveness_counts_beats_another_replica_stored() -> None:
    async with world(heartbeat_seconds=0.1, heartbeat_timeout=0.6) as w:
        ws, _ = await _external(w, "elsewhere")
        for _ in range(12):  # 1.2 s of beats taken by another replica, seen only in the store
            await w.store.record_heartbeats({ws.id: time.time()})
            await asyncio.sleep(0.1)
        assert (await w.c.roster.get(ws.id)).state is S.ONLINE
        assert await w.c.roster.wait_for(ws.id, lambda x: x is not None and x.state is S.OFFLINE, 3)


async def test_a_beat_another_replica_took_shows_in_this_replica_s_list() -> None:
    """The store keeps beats apart from the workspace's record (no refresh brings them):
    liveness puts the stored ones into the roster, so every replica lists the last beat."""
    async with world(heartbeat_seconds=0.1, heartbeat_timeout=60.0) as w:
        ws, _ = await _external(w, "shown")
        at = time.time() + 100.0  # later than any beat this replica took
        await w.store.record_heartbeats({ws.id: at})
        assert await w.c.roster.wait_for(
            ws.id, lambda x: x is not None and x.last_heartbeat == at, 3
        )
        (listed,) = [d for d in await w.c.workspaces.list() if d["id"] == ws.id]
        assert listed["last_heartbeat"] == at


async def test_idle_workspaces_keep_no_loop_and_the_sweep_finds_unannounced_work() -> None:
    def loops() -> list[asyncio.Task[object]]:
        return [t for t in asyncio.all_tasks() if t.get_name().startswith("dispatch-")]

    async with world() as w:
        spaces = [await w.create(f"idle-{i}") for i in range(5)]
        for ws in spaces:
            status, _, _ = await w.send(ws, "hi")
            assert status == 200
        await asyncio.sleep(0.1)
        assert loops() == []
        # a delivery the log never announced (as after a lost notification across replicas)
        ws = spaces[2]
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "SendMessage",
            "params": {"message": {"role": "ROLE_USER", "messageId": "quiet", "parts": []}},
        }
        now = time.time()
        d = Delivery(
            id=uuid.uuid4().hex,
            workspace_id=ws.id,
            message_id="quiet",
            seq=0,
            method="SendMessage",
            request=json.dumps(body).encode(),
            created_at=now,
            updated_at=now,
        )
        await w.store.accept(d)
        got = await w.c.deliveries.wait(d.id, 5)
        assert got is not None and got.status is D.DONE
        assert "quiet" in w.agent(ws).executed


async def test_a_replica_whose_bus_came_back_reads_what_changed_meanwhile() -> None:
    """Changes other replicas announced while this replica's bus was away (an allow-list
    here) were lost with their notices: the bus says so (BUS_GAP) and the roster reads
    what changed, instead of waiting for the housekeeping's pass."""
    async with world(housekeeping_seconds=3600) as w:
        ws = await w.create("gap")
        await w.store.update_workspace(ws.id, allowed_callers=["caller:ci"])  # elsewhere
        await asyncio.sleep(0.1)
        assert (await w.c.roster.get(ws.id)).allowed_callers == []  # no notice came
        await w.c.bus.publish(BUS_GAP, {})  # as the Redis bus does after a reconnect
        assert await w.c.roster.wait_for(
            ws.id, lambda x: x is not None and x.allowed_callers == ["caller:ci"], 3
        )
