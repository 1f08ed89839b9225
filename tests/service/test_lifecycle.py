"""Restarts, joins, pause/resume, crash policy and removal at the service layer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from berth.api.errors import rpc_error_response
from berth.domain.delivery import DeliveryStatus as D
from berth.domain.errors import Conflict, IllegalTransition, InvalidInput, Unavailable
from berth.domain.lifecycle import WorkspaceState as S
from berth.domain.restart import Phase, RestartRecord, Trigger
from berth.services import registry as registry_module
from berth.services.supervisor import Supervisor
from tests.service.fakes import Agent, world


async def _until(pred: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if await pred() if asyncio.iscoroutinefunction(pred) else pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def _finished(w: Any, ws_id: str, restart_id: str) -> Any:
    async def done() -> bool:
        r = await w.c.store.get_restart(ws_id, restart_id)
        return r.finished

    await _until(done)
    return await w.c.store.get_restart(ws_id, restart_id)


async def test_a_restart_drains_runs_every_phase_and_replays_held_messages_in_order() -> None:
    async with world() as w:
        ws = await w.create("a")
        old = w.agent(ws)
        running = asyncio.ensure_future(w.send(ws, "sleep:0.3 first", message_id="m0"))
        await _until(lambda: old.running == 1)
        record, joined = await w.c.workspaces.restart("a", reason="deploy", drain_seconds=5)
        assert not joined
        held = [
            asyncio.ensure_future(w.send(ws, f"held {i}", message_id=f"m{i}")) for i in (1, 2, 3)
        ]
        r = await _finished(w, ws.id, record.id)
        assert r.phase is Phase.DONE, r.error
        assert [p.phase for p in r.phases] == [
            Phase.DRAINING,
            Phase.STOPPING,
            Phase.REQUEUE,
            Phase.STARTING,
            Phase.REPLAY,
        ]
        assert old.signals and old.signals[0]["params"]["reason"] == "deploy"
        assert r.drain_report is not None and r.drain_report["mode"] == "agent"
        assert (await running)[1]["result"]  # the in-flight message finished on the old run
        for h in held:
            assert "result" in (await h)[1]
        new = w.agent(ws)
        assert new is not old and old.executed == ["m0"] and new.executed == ["m1", "m2", "m3"]
        assert (await w.c.roster.get(ws.id)).restart_count == 1


async def test_a_second_request_joins_the_running_cycle() -> None:
    async with world() as w:
        await w.create("a")
        first, joined1 = await w.c.workspaces.restart("a", reason=None, drain_seconds=1)
        second, joined2 = await w.c.workspaces.restart("a", reason=None, drain_seconds=1)
        assert (joined1, joined2) == (False, True) and second.id == first.id
        ws = await w.c.roster.get("a")
        r = await _finished(w, ws.id, first.id)
        assert r.phase is Phase.DONE
        assert w.runtime.starts[ws.id] == 2  # created once, restarted once


async def test_pause_holds_messages_and_resume_delivers_them() -> None:
    async with world() as w:
        ws = await w.create("a")
        out = await w.c.workspaces.pause("a")
        assert out["workspace"]["status"] == "paused"
        status, accepted, _ = await w.send(ws, "while paused", message_id="p1", wait=0)
        assert status == 202
        await asyncio.sleep(0.2)
        assert (await w.c.deliveries.get(accepted["delivery_id"])).status is D.QUEUED
        with pytest.raises(Conflict):
            await w.c.workspaces.restart("a", reason=None, drain_seconds=None)  # paused: resume
        await w.c.workspaces.resume("a")
        got = await w.c.deliveries.wait(accepted["delivery_id"], 5)
        assert got is not None and got.status is D.DONE
        assert w.agent(ws).executed == ["p1"]
        with pytest.raises(Conflict) as e:
            await w.c.workspaces.resume("a")
        assert e.value.code == "not_paused"


async def test_a_crash_restarts_by_policy_and_redelivers_the_cut_message() -> None:
    async with world() as w:
        ws = await w.create("a")
        first = w.agent(ws)
        sent = asyncio.ensure_future(w.send(ws, "sleep:5 long", message_id="m1", wait=20))
        await _until(lambda: first.running == 1)
        w.runtime.crash(ws.id)
        status, body, headers = await sent
        assert body["result"]["message"]["parts"][0]["text"] == "echo: sleep:5 long"
        d = await w.c.deliveries.get(headers["x-berth-delivery-id"])
        assert d.status is D.DONE and d.forwards == 2 and d.attempts == 1
        now = await w.c.roster.get(ws.id)
        assert now.crash_count == 1 and now.state is S.ONLINE
        assert w.agent(ws) is not first and w.agent(ws).executed == ["m1"]


async def test_restart_policy_never_leaves_the_workspace_failed() -> None:
    async with world() as w:
        ws = await w.create("a", restart_policy="never")
        w.runtime.crash(ws.id)
        await _until(lambda: w.c.roster.peek(ws.id).state is S.FAILED)  # type: ignore[union-attr]
        assert "never" in (w.c.roster.peek(ws.id).last_error or "")  # type: ignore[union-attr]


async def test_a_start_that_fails_leaves_the_workspace_failed_with_its_reason() -> None:
    async with world() as w:
        w.runtime.fail_start.add("bad")
        ws, _ = await w.c.workspaces.create({"name": "bad", "command": ["agent"]})
        await _until(lambda: w.c.roster.peek(ws.id).state is S.FAILED)  # type: ignore[union-attr]
        assert "exited with code 1" in (w.c.roster.peek(ws.id).last_error or "")  # type: ignore[union-attr]


async def test_removal_cancels_pending_messages_and_answers_their_callers() -> None:
    async with world() as w:
        ws = await w.create("a")
        await w.c.workspaces.pause("a")
        waiting = asyncio.ensure_future(w.send(ws, "never delivered", message_id="m1", wait=10))
        await asyncio.sleep(0.1)
        out = await w.c.workspaces.remove("a")
        assert [d["message_id"] for d in out["canceled"]] == ["m1"]
        _, body, _ = await waiting
        assert body["error"]["data"]["berth"]["status"] == "canceled"


async def test_an_illegal_move_raises_and_changes_nothing() -> None:
    async with world() as w:
        ws = await w.create("a")
        await w.c.workspaces.pause("a")
        with pytest.raises(IllegalTransition):
            await w.c.runner.move(await w.c.roster.get(ws.id), S.ONLINE)
        assert (await w.c.roster.get(ws.id)).state is S.PAUSED


async def test_the_proxy_holds_a_pass_through_until_the_workspace_is_back() -> None:
    async with world() as w:
        ws = await w.create("a")
        old = w.agent(ws)
        busy = asyncio.ensure_future(w.send(ws, "sleep:0.5 keeps the drain going"))
        await _until(lambda: old.running == 1)
        record, _ = await w.c.workspaces.restart("a", reason=None, drain_seconds=2)
        await _until(lambda: w.c.roster.peek(ws.id).state is not S.ONLINE)  # type: ignore[union-attr]
        get_task = {"jsonrpc": "2.0", "id": 3, "method": "GetTask", "params": {"id": "t"}}
        reply = await w.c.proxy.handle(ws, json.dumps(get_task).encode(), {"x-berth-wait": "5"})
        assert reply.status == 200 and json.loads(reply.body)["id"] == 3
        assert w.agent(ws) is not old and w.agent(ws).received[-1]["method"] == "GetTask"
        assert [d["method"] for d in old.received] == ["SendMessage"]
        assert "result" in (await busy)[1]
        r = await _finished(w, ws.id, record.id)
        assert r.trigger is Trigger.API


async def test_a_pass_through_gives_up_with_503_when_the_workspace_stays_away() -> None:
    async with world() as w:
        ws = await w.create("a")
        await w.c.workspaces.pause("a")
        get_task = {"jsonrpc": "2.0", "id": 3, "method": "GetTask", "params": {"id": "t"}}
        with pytest.raises(Unavailable) as e:
            await w.c.proxy.handle(ws, json.dumps(get_task).encode(), {"x-berth-wait": "0.2"})
        response = rpc_error_response(e.value, 3)
        assert response.status_code == 503 and response.headers["retry-after"] == "5"
        assert json.loads(response.body)["error"]["data"]["reason"] == "workspace_unavailable"


async def test_a_supervised_loop_that_dies_is_started_again() -> None:
    runs: list[int] = []

    async def loop() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("boom")
        await asyncio.sleep(3600)

    sup = Supervisor(backoff_first=0.01)
    sup.run("flaky", loop)
    await _until(lambda: len(runs) == 3)
    assert sup.restarts["flaky"] == 2 and sup.running() == ["flaky"]
    await sup.close()
    assert sup.running() == []


async def test_a_message_cut_by_the_stop_is_counted_as_returned_and_runs_again() -> None:
    async with world() as w:
        ws = await w.create("a")
        old = w.agent(ws)
        sent = asyncio.ensure_future(w.send(ws, "sleep:30 long", message_id="m1", wait=20))
        await _until(lambda: old.running == 1)
        old.handler = None
        record, _ = await w.c.workspaces.restart("a", reason=None, drain_seconds=0.2)
        r = await _finished(w, ws.id, record.id)
        assert r.phase is Phase.DONE and r.drain_report is not None
        assert r.drain_report["drained"] is False  # the drain timed out ...
        requeue = next(p for p in r.phases if p.phase is Phase.REQUEUE)
        assert requeue.detail == "1 returned to the queue"  # ... and the report says so
        w.agent(ws).handler = None
        d = await w.c.deliveries.find(ws.id, "m1")
        assert d is not None and d.attempts == 0  # a planned stop: no attempt counted
        sent.cancel()


async def test_an_idle_workspace_is_suspended_and_a_message_wakes_it() -> None:
    async with world() as w:
        ws = await w.create("a", idle_suspend_seconds=0.4)
        _, body, _ = await w.send(ws, "first", message_id="m0")
        assert "result" in body
        first = w.agent(ws)
        await _until(lambda: w.c.roster.peek(ws.id).state is S.SUSPENDED)  # type: ignore[union-attr]
        assert not first.alive and first.signals  # drained, then stopped
        assert (await w.c.workspaces.show("a"))["status"] == "suspended"
        status, body, headers = await w.send(ws, "wake up", message_id="m1", wait=10)
        assert status == 200 and body["result"]["message"]["parts"][0]["text"] == "echo: wake up"
        assert w.agent(ws) is not first and w.agent(ws).executed == ["m1"]
        restarts = await w.c.store.list_restarts(ws.id)
        assert restarts[0].trigger is Trigger.WAKE and restarts[0].phase is Phase.DONE
        assert (await w.c.roster.get(ws.id)).restart_count == 0  # a wake is not a restart


async def test_a_busy_workspace_is_not_suspended() -> None:
    async with world() as w:
        ws = await w.create("a", idle_suspend_seconds=0.3)
        status, body, _ = await w.send(ws, "sleep:1.2 long work", message_id="m0")
        assert status == 200 and "result" in body  # it ran to the end: not suspended under it
        assert w.runtime.starts[ws.id] == 1


async def test_idle_suspend_is_refused_for_an_external_workspace() -> None:
    async with world() as w:
        with pytest.raises(InvalidInput):
            await w.c.workspaces.create(
                {"name": "x", "runtime": "external", "idle_suspend_seconds": 5}
            )


async def test_a_cycle_cut_by_berth_s_own_stop_is_closed_as_failed_on_start() -> None:
    async with world() as w:
        ws = await w.create("a")
        cut = RestartRecord(
            id="cut-1",
            workspace_id=ws.id,
            trigger=Trigger.API,
            reason="before a kill -9 of berth",
            drain_seconds=1,
            created_at=1.0,
            phase=Phase.STOPPING,
        )
        await w.c.store.save_restart(cut)
        await w.c.registry.recover(take_over_leases=True)  # what a new berth does first
        r = await w.c.store.get_restart(ws.id, "cut-1")
        assert r.phase is Phase.FAILED and r.error == "berth stopped during this cycle"
        assert r.finished_at is not None


async def test_an_external_agent_that_registers_at_once_is_not_drained_by_its_first_start() -> None:
    """An external agent may register the moment its workspace is created, before its first
    start cycle has run. That registration is the start the cycle is for: the cycle must
    neither drain the agent (restart_pending) nor move it back to provisioning. This agent
    answers none of berth's signals (404) and never heartbeats: back in provisioning,
    nothing would bring it online again."""
    async with world() as w:
        ws, secrets = await w.c.workspaces.create({"name": "eager", "runtime": "external"})
        url = "http://127.0.0.1/eager.agent"
        agent = Agent(ws.id, secrets["agent_token"], url, serves_signals=False)
        w.agents.by_url[url] = agent
        await w.c.registry.register(secrets["agent_token"], {"url": url})  # before the cycle
        await _until(_no_cycle(w, ws.id))
        await asyncio.sleep(0.05)  # anything the cycle would still do after its end
        assert (await w.c.roster.get(ws.id)).state is S.ONLINE
        assert _drains(agent) == []  # the resume it is told (404 here) changes nothing
        (r,) = await w.c.store.list_restarts(ws.id)
        assert r.phase is Phase.DONE
        assert [(p.phase, p.detail) for p in r.phases] == [
            (Phase.STARTING, "the agent registered after the cycle began"),
            (Phase.REPLAY, None),
        ]


def _drains(agent: Agent) -> list[dict[str, Any]]:
    """The drain signals (restart_pending) the agent was sent."""
    return [s for s in agent.signals if s.get("method") == "signals/restart_pending"]


def _no_cycle(w: Any, ws_id: str) -> Any:
    async def over() -> bool:
        return await w.c.store.active_restart(ws_id) is None

    return over


async def test_an_external_agent_that_registers_after_its_cycle_looked_stays_online() -> None:
    """The same registration, landing after the first start cycle read the workspace (not
    online) and before its start step: the start leaves the agent online (with several
    replicas the cycle's view may lag the registration by this much)."""
    async with world() as w:
        runner = w.c.runner
        requeue = runner.requeue
        url = "http://127.0.0.1/late.agent"
        tokens: list[str] = []

        async def register_first(ws: Any, cut: set[str]) -> int:
            await _until(lambda: tokens)
            await w.c.registry.register(tokens[0], {"url": url})
            return await requeue(ws, cut)

        runner.requeue = register_first  # type: ignore[method-assign]
        ws, secrets = await w.c.workspaces.create({"name": "late", "runtime": "external"})
        agent = Agent(ws.id, secrets["agent_token"], url, serves_signals=False)
        w.agents.by_url[url] = agent
        tokens.append(secrets["agent_token"])
        await _until(_no_cycle(w, ws.id))
        await asyncio.sleep(0.05)
        assert (await w.c.roster.get(ws.id)).state is S.ONLINE
        assert _drains(agent) == []  # the resume it is told (404 here) changes nothing


async def _external(w: Any, name: str) -> tuple[Any, str, Agent]:
    """An external workspace whose (fake) agent has registered, its first cycle over:
    (workspace, the agent's credential, the agent)."""
    url = f"http://127.0.0.1/{name}.agent"
    ws, secrets = await w.c.workspaces.create({"name": name, "runtime": "external"})
    token = secrets["agent_token"]
    agent = Agent(ws.id, token, url)
    w.agents.by_url[url] = agent
    await w.c.registry.register(token, {"url": url})
    await _until(_no_cycle(w, ws.id))
    return ws, token, agent


@pytest.mark.parametrize("lands", ["before the cycle looks", "before its start step"])
async def test_a_paused_external_agent_that_registers_during_the_resume_is_told_to_resume(
    lands: str,
) -> None:
    """A pause drains an external agent (restart_pending); it stays draining, and refuses
    every message (DRAINING), until berth tells it to resume. With several replicas its
    heartbeat, on any replica, is answered `reregister` as soon as the workspace leaves
    paused, so its registration can land during the resume's cycle, before the start step
    that sends the resume: either before the cycle reads the workspace (it finds it online)
    or after (its start finds it online). The cycle must still tell the agent its drain is
    over, else it is online and never takes a message (CI: a send held on one replica,
    resumed on another, was never answered)."""
    async with world() as w:
        ws, token, agent = await _external(w, "napping")
        url = agent.url
        await w.c.workspaces.pause("napping")
        assert agent.draining
        status, accepted, _ = await w.send(ws, "held while paused", message_id="p1", wait=0)
        assert status == 202
        registered: list[bool] = []

        async def register() -> None:
            if not registered:
                registered.append(True)
                await w.c.registry.register(token, {"url": url})

        if lands == "before the cycle looks":
            save = w.store.save_restart

            async def save_then_register(r: RestartRecord) -> None:
                await save(r)
                if r.trigger is Trigger.RESUME:  # its first save: before the cycle runs
                    await register()

            w.store.save_restart = save_then_register  # type: ignore[method-assign]
        else:
            requeue = w.c.runner.requeue

            async def register_then_requeue(ws: Any, cut: set[str]) -> int:
                await register()
                return await requeue(ws, cut)

            w.c.runner.requeue = register_then_requeue  # type: ignore[method-assign]
        await w.c.workspaces.resume("napping")
        await _until(_no_cycle(w, ws.id))
        assert registered
        got = await w.c.deliveries.wait(accepted["delivery_id"], 5)
        assert got is not None and got.status is D.DONE, got
        assert not agent.draining and agent.executed == ["p1"]
        assert (await w.c.roster.get(ws.id)).state is S.ONLINE


async def test_an_agent_left_draining_by_a_lost_resume_is_told_to_resume_by_its_heartbeat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The resume's cycle sends `signals/resume`, which is lost: the agent registers again
    (the workspace comes online) but still drains for berth and refuses every message. Its
    heartbeat says so (draining, not exiting); once that has lasted STUCK_DRAINING with no
    restart running, the answer tells it to resume, and the held message is delivered. A
    drain for the agent's own exit, or one during a running cycle, is never ended so."""
    monkeypatch.setattr(registry_module, "STUCK_DRAINING", 0.3)
    async with world() as w:
        ws, token, agent = await _external(w, "sleepy")
        url = agent.url
        await w.c.workspaces.pause("sleepy")
        status, accepted, _ = await w.send(ws, "held while paused", message_id="p1", wait=0)
        assert status == 202 and agent.draining
        agent.loses_resume = True
        await w.c.workspaces.resume("sleepy")
        await _until(_no_cycle(w, ws.id))
        beat = {"active_tasks": 0, "draining": True, "exiting": False}
        if (await w.c.registry.heartbeat(token, beat))["reregister"]:
            await w.c.registry.register(token, {"url": url})
        assert (await w.c.roster.get(ws.id)).state is S.ONLINE
        assert agent.draining  # online, and refusing every message

        async def told() -> bool:
            answer = await w.c.registry.heartbeat(token, beat)
            assert not answer["reregister"]
            if answer.get("resume"):
                agent.draining = False  # what the SDK does with it (tests/unit: platform)
            return not agent.draining

        assert "resume" not in await w.c.registry.heartbeat(token, beat)  # not at once
        exiting = {**beat, "exiting": True}
        unsaid = {"active_tasks": 0, "draining": True}  # an agent that does not tell them apart
        assert "resume" not in await w.c.registry.heartbeat(token, unsaid)
        await asyncio.sleep(0.4)
        assert "resume" not in await w.c.registry.heartbeat(token, unsaid)  # never, however long
        assert "resume" not in await w.c.registry.heartbeat(token, exiting)  # its own exit
        await _until(told)
        got = await w.c.deliveries.wait(accepted["delivery_id"], 5)
        assert got is not None and got.status is D.DONE, got
        assert agent.executed == ["p1"]
        assert w.c.metrics.value("berth_agents_resumed_total", workspace="sleepy") == 1


async def test_a_heartbeat_never_resumes_an_agent_while_a_restart_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry_module, "STUCK_DRAINING", 0.0)
    async with world() as w:
        ws, token, _ = await _external(w, "busy")
        r = RestartRecord("held", ws.id, Trigger.API, "held open by the test", 5.0)
        await w.c.store.save_restart(r)  # a cycle running (on any replica)
        beat = {"active_tasks": 0, "draining": True, "exiting": False}
        for _ in range(3):
            assert "resume" not in await w.c.registry.heartbeat(token, beat)
            await asyncio.sleep(0.05)


async def test_a_heartbeat_resumes_only_what_the_store_says_is_online_and_after_a_fresh_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another replica may have paused the workspace (a pause writes no restart record)
    while this replica's roster still says online: the store decides. And a drain heard of
    long ago (heartbeats went to other replicas meanwhile) starts its wait again."""
    monkeypatch.setattr(registry_module, "STUCK_DRAINING", 0.3)
    async with world() as w:
        ws, token, _ = await _external(w, "elsewhere")
        beat = {"active_tasks": 0, "draining": True, "exiting": False}
        assert "resume" not in await w.c.registry.heartbeat(token, beat)
        # silent here for longer than three heartbeats (0.2 s here) and STUCK_DRAINING
        await asyncio.sleep(1.0)
        assert "resume" not in await w.c.registry.heartbeat(token, beat)  # a new wait
        await asyncio.sleep(0.35)
        # another replica paused it: the store moved, this roster has not heard yet
        online = await w.c.roster.get(ws.id)
        await w.store.move_workspace(ws.id, S.PAUSED)
        w.c.roster.put(online)  # (the notice is still on its way)
        assert (await w.c.roster.get(ws.id)).state is S.ONLINE
        assert "resume" not in await w.c.registry.heartbeat(token, beat)
        await w.store.move_workspace(ws.id, S.OFFLINE)
        await w.store.move_workspace(ws.id, S.PROVISIONING)
        await w.store.move_workspace(ws.id, S.ONLINE)

        async def resumed() -> bool:
            return (await w.c.registry.heartbeat(token, beat)).get("resume") is True

        await _until(resumed)  # online again in the store: told, once its wait is over


async def test_a_crash_of_the_agent_a_cycle_just_started_is_restarted_not_joined() -> None:
    """The agent a restart cycle started crashes while that cycle finishes (its replay: a
    held message that kills the agent is forwarded at once). The crash's restart must not
    join that cycle, which has started its agent already and ends without starting another
    (the workspace would stay offline, nothing left to start it): it waits for the cycle,
    then runs its own."""
    async with world() as w:
        ws = await w.create("a")
        save = w.store.save_restart
        crashed: list[str] = []

        async def crash_in_replay(r: RestartRecord) -> None:
            if r.trigger is Trigger.API and r.phase is Phase.REPLAY and not crashed:
                crashed.append(r.id)
                w.runtime.crash(ws.id)  # the agent this cycle started
                await asyncio.sleep(0.3)  # its exit is handled while the cycle is not done
            await save(r)

        w.store.save_restart = crash_in_replay  # type: ignore[method-assign]
        record, _ = await w.c.workspaces.restart("a", reason=None, drain_seconds=1)
        assert (await _finished(w, ws.id, record.id)).phase is Phase.DONE
        assert crashed == [record.id]

        async def back() -> bool:
            now = await w.c.roster.get(ws.id)
            return now.state is S.ONLINE and w.runtime.starts[ws.id] == 3

        await _until(back)
        triggers = [r.trigger for r in await w.store.list_restarts(ws.id)]
        assert sorted(t.value for t in triggers) == ["api", "policy", "startup"]
