"""Versions on every store: the serving version, the peer instance and its run token, and
how a restart record says it ran (issue 13's migration)."""

from __future__ import annotations

from berth.domain.deploy import Instance, RestartMode, Role
from berth.domain.restart import RestartRecord, Trigger
from berth.ports import Store
from tests.contract.test_store import make_ws


async def test_peer_instance_round_trips_and_is_cleared(store: Store) -> None:
    ws = make_ws("alpha", run_token_hash="r1")
    await store.create_workspace(ws)
    assert (await store.get_workspace("alpha")).version == 1
    assert (await store.get_workspace("alpha")).peer is None
    peer = Instance(
        version=2,
        role=Role.NEXT,
        run_token_hash="r2",
        command=["python", "-m", "agent", "--v2"],
        env={"A": "1"},
        started_at=5.0,
    )
    await store.update_workspace(ws.id, peer=peer, peer_run_token_hash="r2")
    got = await store.get_workspace(ws.id)
    assert got.peer == peer and got.peer_run_token_hash == "r2"
    peer.agent_url, peer.registered_at = "http://127.0.0.1:9", 6.0
    await store.update_workspace(ws.id, peer=peer)
    assert (await store.get_workspace(ws.id)).peer == peer
    # the switch: the record becomes version 2, the old one is the peer until it stops
    old = Instance(version=1, role=Role.OLD, run_token_hash="r1", agent_url="http://old")
    await store.update_workspace(
        ws.id, version=2, run_token_hash="r2", peer=old, peer_run_token_hash="r1"
    )
    got = await store.get_workspace(ws.id)
    assert (got.version, got.run_token_hash, got.peer) == (2, "r2", old)
    await store.update_workspace(ws.id, peer=None, peer_run_token_hash=None)
    got = await store.get_workspace(ws.id)
    assert got.peer is None and got.peer_run_token_hash is None and got.version == 2


async def test_workspace_by_run_token_finds_the_peer_run_token(store: Store) -> None:
    """A deploy's next version registers with its own run credential (issue 10's model)."""
    ws = make_ws("alpha", token_hash="t1", run_token_hash="r1")
    await store.create_workspace(ws)
    assert await store.workspace_by_run_token("r2") is None
    await store.update_workspace(ws.id, peer=Instance(2, Role.NEXT, "r2"), peer_run_token_hash="r2")
    found = await store.workspace_by_run_token("r2")
    assert found is not None and found.id == ws.id and found.peer_run_token_hash == "r2"
    assert (await store.workspace_by_run_token("r1")).id == ws.id  # type: ignore[union-attr]
    assert await store.workspace_by_run_token("t1") is None  # not a run credential
    await store.update_workspace(ws.id, peer=None, peer_run_token_hash=None)
    assert await store.workspace_by_run_token("r2") is None  # a stopped peer's is refused


async def test_restart_mode_is_part_of_the_spec(store: Store) -> None:
    ws = make_ws("alpha", limits={"restart_mode": RestartMode.REPLACE.value})
    await store.create_workspace(ws)
    assert (await store.get_workspace(ws.id)).restart_mode is RestartMode.REPLACE
    assert make_ws("beta").restart_mode is RestartMode.STOP_FIRST


async def test_restart_record_keeps_mode_and_versions(store: Store) -> None:
    r = RestartRecord("r-1", "w1", Trigger.DEPLOY, "v2", 5.0, created_at=1.0)
    await store.save_restart(r)
    got = await store.get_restart("w1", "r-1")
    assert got.mode == "stop-first" and got.versions is None
    r.mode, r.versions = "replace", {"from": 1, "to": 2}
    await store.save_restart(r)
    got = await store.get_restart("w1", "r-1")
    assert (got.trigger, got.mode, got.versions) == (
        Trigger.DEPLOY,
        "replace",
        {"from": 1, "to": 2},
    )
