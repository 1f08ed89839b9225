"""Deploys at the service layer: replace (start before stop), FIFO across the switch, a
next version that does not come up, stop-first deploys, and the mode rules."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from berth.domain.deploy import RestartMode, Role
from berth.domain.errors import Conflict, InvalidInput
from berth.domain.lifecycle import WorkspaceState as S
from berth.domain.restart import Phase, Trigger
from tests.service.fakes import world
from tests.service.test_lifecycle import _finished, _until


async def test_replace_starts_the_next_version_before_stopping_the_old() -> None:
    async with world() as w:
        ws = await w.create("a", restart_mode="replace")
        old = w.agent(ws)
        running = asyncio.ensure_future(w.send(ws, "sleep:0.4 first", message_id="m0"))
        await _until(lambda: old.running == 1)
        states: list[S] = []
        w.c.roster.on_change(lambda x: states.append(x.state))
        r = await w.c.workspaces.deploy("a", {"command": ["agent", "--v2"], "reason": "v2"})
        assert r.trigger is Trigger.DEPLOY and r.mode == "replace"
        held = [asyncio.ensure_future(w.send(ws, f"next {i}", message_id=f"m{i}")) for i in (1, 2)]
        r = await _finished(w, ws.id, r.id)
        assert r.phase is Phase.DONE, r.error
        assert [p.phase for p in r.phases] == [
            Phase.STARTING,
            Phase.SWITCH,
            Phase.DRAINING,
            Phase.STOPPING,
        ]
        assert r.versions == {"from": 1, "to": 2}
        assert set(states) == {S.ONLINE}  # no state move: it served throughout
        assert "result" in (await running)[1]
        for h in held:
            assert "result" in (await h)[1]
        new = w.agent(ws)
        # max_concurrency 1: the next version took m1 only after the old one finished m0
        assert old.executed == ["m0"] and new.executed == ["m1", "m2"]
        assert old.signals and not old.alive and new.alive
        now = await w.c.roster.get(ws.id)
        assert (now.version, now.command, now.peer, now.peer_run_token_hash) == (
            2,
            ["agent", "--v2"],
            None,
            None,
        )
        assert now.agent_url == new.url and now.state is S.ONLINE and now.restart_count == 1
        assert now.run_token_hash is not None
        # the old run's token no longer authenticates; the new one does
        with pytest.raises(Exception, match="outdated"):
            await w.c.registry.heartbeat(old.token, {"active_tasks": 0})
        assert (await w.c.registry.heartbeat(new.token, {"active_tasks": 0}))["ok"]


async def test_the_next_version_registers_without_taking_the_record() -> None:
    async with world() as w:
        ws = await w.create("a", restart_mode="replace")
        seen: list[Any] = []

        def watch(x: Any) -> None:
            if x.peer is not None:
                seen.append((x.agent_url, x.peer.role, x.peer.agent_url))

        w.c.roster.on_change(watch)
        old_url = ws.agent_url
        r = await w.c.workspaces.deploy("a", {})
        r = await _finished(w, ws.id, r.id)
        assert r.phase is Phase.DONE, r.error
        # while the next version was starting and registered, the record kept the old url
        assert (old_url, Role.NEXT, None) in seen
        assert any(u == old_url and role is Role.NEXT and p for u, role, p in seen)
        assert any(role is Role.OLD and p == old_url for _, role, p in seen)  # after the switch


async def test_a_next_version_that_exits_leaves_the_old_one_serving() -> None:
    async with world() as w:
        ws = await w.create("a", restart_mode="replace")
        old = w.agent(ws)
        w.runtime.fail_start.add("a")
        r = await w.c.workspaces.deploy("a", {"command": ["broken"]})
        r = await _finished(w, ws.id, r.id)
        assert r.phase is Phase.FAILED and "exited with code 1" in (r.error or "")
        now = await w.c.roster.get(ws.id)
        assert now.state is S.ONLINE and now.version == 1 and now.command == ["agent"]
        assert now.peer is None and now.agent_url == old.url and now.crash_count == 0
        assert old.alive and not old.signals
        status, body, _ = await w.send(ws, "still here", message_id="after")
        assert body["result"] and old.executed[-1] == "after"


async def test_stop_first_deploy_changes_the_spec_and_can_switch_the_mode() -> None:
    async with world() as w:
        ws = await w.create("a")
        assert ws.restart_mode is RestartMode.STOP_FIRST
        with pytest.raises(Conflict, match="restart_mode replace"):
            await w.c.workspaces.deploy("a", {"mode": "replace"})
        r = await w.c.workspaces.deploy(
            "a", {"env": {"V": "2"}, "restart_mode": "replace", "reason": "v2"}
        )
        r = await _finished(w, ws.id, r.id)
        assert r.phase is Phase.DONE and r.mode == "stop-first", r.error
        assert Phase.REQUEUE in [p.phase for p in r.phases]
        now = await w.c.roster.get(ws.id)
        assert now.env == {"V": "2"} and now.version == 2
        assert now.restart_mode is RestartMode.REPLACE
        r = await w.c.workspaces.deploy("a", {"env": {"W": "3"}})
        r = await _finished(w, ws.id, r.id)
        assert r.phase is Phase.DONE and r.mode == "replace", r.error
        now = await w.c.roster.get(ws.id)
        assert now.env == {"V": "2", "W": "3"} and now.version == 3


async def test_restart_mode_replace_and_its_refusals() -> None:
    async with world() as w:
        ws = await w.create("a", restart_mode="replace")
        r, _ = await w.c.workspaces.restart(
            "a", reason=None, drain_seconds=1, mode=RestartMode.REPLACE
        )
        r = await _finished(w, ws.id, r.id)
        assert r.phase is Phase.DONE and r.mode == "replace"
        r, _ = await w.c.workspaces.restart(
            "a", reason=None, drain_seconds=1, mode=RestartMode.STOP_FIRST
        )
        r = await _finished(w, ws.id, r.id)
        assert r.mode == "stop-first" and Phase.REQUEUE in [p.phase for p in r.phases]
        for bad, match in (
            ({"command": []}, "non-empty"),
            ({"image": "x"}, "docker"),
            ({"env": {"BERTH_URL": "x"}}, "set by berth"),
            ({"mode": "sideways"}, "one of"),
            ({"colour": "red"}, "unknown"),
            ([], "JSON object"),
        ):
            with pytest.raises(InvalidInput, match=match):
                await w.c.workspaces.deploy("a", bad)
        with pytest.raises(InvalidInput, match="a runtime berth runs"):
            await w.c.workspaces.create(
                {"name": "ext", "runtime": "external", "restart_mode": "replace"}
            )
        await w.c.workspaces.create({"name": "ext", "runtime": "external"})
        with pytest.raises(Conflict, match="stop-first") as e:
            await w.c.workspaces.deploy("ext", {"mode": "replace"})
        assert e.value.code == "replace_unsupported"


async def test_a_crash_of_either_version_during_a_replace_leaves_it_online() -> None:
    async with world() as w:
        ws = await w.create("a", restart_mode="replace", drain_seconds=5)
        old = w.agent(ws)
        running = asyncio.ensure_future(w.send(ws, "sleep:0.5 long", message_id="m0"))
        await _until(lambda: old.running == 1)
        r = await w.c.workspaces.deploy("a", {"env": {"V": "2"}})
        # the new version crashes while the old one drains its in-flight message
        await _until(lambda: (ws.id, 2) in w.runtime.versions and bool(old.signals))
        w.runtime.crash_version(ws.id, 2)
        r = await _finished(w, ws.id, r.id)
        assert r.phase is Phase.DONE, r.error
        assert [p.phase for p in r.phases][-1] is Phase.STARTING  # started again by the cycle
        assert "result" in (await running)[1]
        now = await w.c.roster.get(ws.id)
        assert now.state is S.ONLINE and now.version == 2 and now.crash_count == 1
        assert "result" in (await w.send(ws, "after", message_id="m1"))[1]
        # the serving version crashes while the next one starts: the switch brings it online
        register = w.runtime.register
        assert register is not None

        async def slowly(token: str, body: dict[str, Any]) -> Any:
            await asyncio.sleep(0.5)  # the next version registers after the crash is handled
            return await register(token, body)

        w.runtime.register = slowly
        r = await w.c.workspaces.deploy("a", {"env": {"V": "3"}})
        await _until(lambda: (ws.id, 3) in w.runtime.versions)
        w.runtime.crash_version(ws.id, 2)
        await _until(lambda: w.c.roster.peek(ws.id).state is S.OFFLINE)  # type: ignore[union-attr]
        r = await _finished(w, ws.id, r.id)
        assert r.phase is Phase.DONE, r.error
        now = await w.c.roster.get(ws.id)
        assert now.state is S.ONLINE and now.version == 3 and now.env == {"V": "3"}
        assert now.crash_count == 2 and w.runtime.starts[ws.id] == 4  # none after the switch
        assert "result" in (await w.send(ws, "after 2", message_id="m2"))[1]
