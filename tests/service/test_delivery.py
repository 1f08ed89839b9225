"""The message path at the service layer: proxy -> log -> dispatcher -> agent -> log.

Each test runs berth's real services on the in-memory adapters with fake agents, so the
settle rules, idempotency and cancellation are checked in milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from berth.api.errors import rpc_error_response
from berth.domain.delivery import DeliveryStatus as D
from berth.domain.errors import (
    AgentUnreachable,
    Conflict,
    InvalidInput,
    NotFound,
    Overloaded,
    RpcInvalid,
)
from berth.ports import AgentReply
from berth.wire import rpc_result
from tests.contract.test_store import make_d
from tests.service.fakes import Agent, text_of, world


async def test_a_send_is_answered_by_the_agent_and_recorded_done() -> None:
    async with world() as w:
        ws = await w.create("a")
        status, body, headers = await w.send(ws, "hi", message_id="m1")
        assert status == 200 and body["result"]["message"]["parts"][0]["text"] == "echo: hi"
        d = await w.c.deliveries.get(headers["x-berth-delivery-id"])
        assert (d.status, d.attempts, d.forwards) == (D.DONE, 0, 1)
        assert w.agent(ws).executed == ["m1"]
        assert "x-berth-replayed" not in headers


async def test_the_same_message_id_gets_the_same_reply_marked_replayed_and_runs_once() -> None:
    async with world() as w:
        ws = await w.create("a")
        first = await w.send(ws, "once", message_id="m1", rid=1)
        again = await w.send(ws, "once", message_id="m1", rid=2)
        assert again[1]["result"] == first[1]["result"] and again[1]["id"] == 2
        assert again[2]["x-berth-replayed"] == "true"
        assert again[2]["x-berth-delivery-id"] == first[2]["x-berth-delivery-id"]
        assert w.agent(ws).executed == ["m1"]


async def test_concurrent_duplicates_join_one_execution() -> None:
    async with world() as w:
        ws = await w.create("a")
        got = await asyncio.gather(*(w.send(ws, "sleep:0.1 x", message_id="dup") for _ in range(5)))
        assert len({json.dumps(g[1]["result"]) for g in got}) == 1
        assert w.agent(ws).executed == ["dup"]


@pytest.mark.parametrize(
    "raw,code",
    [
        (b"{nope", -32700),
        (b'{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{}}', -32602),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":{"messageId":5}}}',
            -32602,
        ),
    ],
)
async def test_bad_envelopes_are_refused_and_nothing_is_accepted(raw: bytes, code: int) -> None:
    async with world() as w:
        ws = await w.create("a")
        with pytest.raises(RpcInvalid) as e:
            await w.c.proxy.handle(ws, raw, {})
        assert e.value.rpc_code == code
        assert await w.c.deliveries.recent(ws.id) == []


async def test_an_agent_error_reply_is_final_and_counts_no_attempt() -> None:
    async def fails(agent: Agent, doc: dict[str, Any]) -> AgentReply:
        err = {"jsonrpc": "2.0", "id": doc["id"], "error": {"code": -32001, "message": "no"}}
        return AgentReply(200, json.dumps(err).encode())

    async with world() as w:
        ws = await w.create("a")
        w.agent(ws).handler = fails
        _, body, headers = await w.send(ws, "x")
        assert body["error"]["code"] == -32001
        d = await w.c.deliveries.get(headers["x-berth-delivery-id"])
        assert (d.status, d.attempts) == (D.DONE, 0)


async def test_a_4xx_without_json_rpc_is_dead_at_once() -> None:
    async def rejects(agent: Agent, doc: dict[str, Any]) -> AgentReply:
        return AgentReply(415, b"unsupported media type", "text/plain")

    async with world() as w:
        ws = await w.create("a")
        w.agent(ws).handler = rejects
        _, body, headers = await w.send(ws, "x")
        d = await w.c.deliveries.get(headers["x-berth-delivery-id"])
        assert d.status is D.DEAD and "rejected" in (d.reason or "")
        assert body["error"]["data"]["berth"]["status"] == "dead"  # berth's error, not the agent's


async def test_the_draining_refusal_is_a_deferral_not_an_attempt() -> None:
    async with world() as w:
        ws = await w.create("a")
        agent = w.agent(ws)
        agent.draining = True
        sent = asyncio.ensure_future(w.send(ws, "later", message_id="m1"))
        await asyncio.sleep(0.3)
        d = await w.c.deliveries.find(ws.id, "m1")
        assert d is not None and d.attempts == 0 and not d.status.final
        agent.draining = False
        status, body, _ = await sent
        assert body["result"]["message"]["parts"][0]["text"] == "echo: later"
        assert (await w.c.deliveries.find(ws.id, "m1")).attempts == 0  # type: ignore[union-attr]


async def test_an_unreached_agent_is_never_an_attempt() -> None:
    async with world() as w:
        ws = await w.create("a")
        w.agents.refuse.add(w.agent(ws).url)
        sent = asyncio.ensure_future(w.send(ws, "x", message_id="m1"))
        await asyncio.sleep(2.5)  # a retry every second, none of them counted
        d = await w.c.deliveries.find(ws.id, "m1")
        assert d is not None and d.attempts == 0 and d.forwards >= 2 and not d.status.final
        w.agents.refuse.clear()
        _, body, _ = await sent
        assert "result" in body


async def test_a_message_that_crashes_its_agent_each_time_ends_dead_as_poison() -> None:
    async def crash_on_poison(agent: Agent, doc: dict[str, Any]) -> AgentReply:
        if text_of(doc) == "poison":
            w.runtime.crash(agent.ws_id)
            await asyncio.sleep(1)
        return AgentReply(200, rpc_result(doc["id"], {"message": {"parts": [{"text": "ok"}]}}))

    async with world(max_attempts=3) as w:
        ws = await w.create("a")
        w.agent(ws).handler = crash_on_poison
        status, body, headers = await w.send(ws, "poison", wait=20)
        d = await w.c.deliveries.get(headers["x-berth-delivery-id"])
        assert d.status is D.DEAD and d.attempts == 3 and "poison" in (d.reason or "")
        assert body["error"]["data"]["berth"]["status"] == "dead"
        # the workspace came back each time and serves the next message
        _, ok, _ = await w.send(await w.c.roster.get(ws.id), "fine")
        assert ok["result"]["message"]["parts"][0]["text"] == "ok"


async def test_cancel_of_a_queued_message_never_reaches_the_agent() -> None:
    async with world() as w:
        ws = await w.create("a")
        await w.c.workspaces.pause("a")
        status, accepted, _ = await w.send(ws, "x", message_id="m1", wait=0)
        assert status == 202
        cancel = {"jsonrpc": "2.0", "id": 9, "method": "CancelTask", "params": {"id": "m1"}}
        reply = await w.c.proxy.handle(ws, json.dumps(cancel).encode(), {})
        task = json.loads(reply.body)["result"]
        assert task["status"]["state"] == "TASK_STATE_CANCELED"
        assert task["metadata"]["berth"]["canceled_in_queue"] is True
        await w.c.workspaces.resume("a")
        await asyncio.sleep(0.2)
        assert w.agent(ws).received == []
        assert (await w.c.deliveries.get(accepted["delivery_id"])).status is D.CANCELED


async def test_cancel_and_retry_follow_the_domain_rules() -> None:
    async with world() as w:
        ws = await w.create("a")
        _, _, headers = await w.send(ws, "x")
        done = headers["x-berth-delivery-id"]
        with pytest.raises(Conflict) as e:
            await w.c.deliveries.cancel(done, "too late")
        assert e.value.code == "not_cancelable" and "queued" in e.value.message
        with pytest.raises(Conflict) as e:
            await w.c.deliveries.retry(done)
        assert e.value.code == "not_retryable"
        with pytest.raises(NotFound):
            await w.c.deliveries.cancel("nope", "x")


async def test_a_dead_letter_retried_by_an_operator_runs_again() -> None:
    calls = {"n": 0}

    async def first_rejects(agent: Agent, doc: dict[str, Any]) -> AgentReply:
        calls["n"] += 1
        if calls["n"] == 1:
            return AgentReply(400, b"bad", "text/plain")
        return AgentReply(200, rpc_result(doc["id"], {"message": {"parts": [{"text": "ok"}]}}))

    async with world() as w:
        ws = await w.create("a")
        w.agent(ws).handler = first_rejects
        _, _, headers = await w.send(ws, "x")
        did = headers["x-berth-delivery-id"]
        assert (await w.c.deliveries.get(did)).status is D.DEAD
        await w.c.deliveries.retry(did)
        got = await w.c.deliveries.wait(did, 5)
        assert got is not None and got.status is D.DONE and got.attempts == 0


async def test_order_is_kept_with_max_concurrency_one() -> None:
    async with world() as w:
        ws = await w.create("a")
        await w.c.workspaces.pause("a")
        for i in range(20):
            await w.send(ws, f"n{i}", message_id=f"m{i:02d}", wait=0)
        await w.c.workspaces.resume("a")
        for _ in range(200):
            if len(w.agent(ws).executed) == 20:
                break
            await asyncio.sleep(0.02)
        assert w.agent(ws).executed == [f"m{i:02d}" for i in range(20)]


async def test_transport_failure_not_explained_by_a_restart_counts() -> None:
    calls = {"n": 0}

    async def flaky(agent: Agent, doc: dict[str, Any]) -> AgentReply:
        calls["n"] += 1
        if calls["n"] == 1:
            raise AgentUnreachable("connection reset")
        return AgentReply(200, rpc_result(doc["id"], {"message": {"parts": [{"text": "ok"}]}}))

    async with world() as w:
        ws = await w.create("a")
        w.agent(ws).handler = flaky
        _, body, headers = await w.send(ws, "x")
        d = await w.c.deliveries.get(headers["x-berth-delivery-id"])
        assert d.status is D.DONE and d.attempts == 1 and d.forwards == 2


async def test_a_full_queue_refuses_new_messages_with_429_and_keeps_every_accepted_one() -> None:
    async with world() as w:
        ws = await w.create("a", max_queue=3)
        await w.c.workspaces.pause("a")
        accepted = [await w.send(ws, f"n{i}", message_id=f"m{i}", wait=0) for i in range(3)]
        assert [a[0] for a in accepted] == [202, 202, 202]
        with pytest.raises(Overloaded) as e:
            await w.send(ws, "one too many", message_id="m3", wait=0)
        with pytest.raises(Overloaded):  # a caller that would wait: its wait is not left behind
            await w.send(ws, "one too many", message_id="m4", wait=5)
        assert w.c.deliveries._waiters._futs == {}
        response = rpc_error_response(e.value, 1)
        assert response.status_code == 429 and response.headers["retry-after"] == "5"
        body = json.loads(response.body)
        assert (
            body["error"]["data"]["reason"] == "queue_full"
            and "3 messages" in body["error"]["message"]
        )
        assert await w.c.deliveries.find(ws.id, "m3") is None  # nothing half-accepted
        again = await w.send(ws, "n1", message_id="m1", wait=0)  # a retry of an accepted one
        assert again[0] == 202 and again[1]["delivery_id"] == accepted[1][1]["delivery_id"]
        again = await w.send(ws, "n1", message_id="m1", wait=0.05)  # waiting, as a duplicate
        assert again[0] == 202 and w.c.deliveries._waiters._futs == {}
        shown = await w.c.workspaces.show("a")
        assert shown["queue_depth"] == 3 and shown["max_queue"] == 3
        assert shown["queue_age_seconds"] is not None and shown["queue_age_seconds"] >= 0
        await w.c.workspaces.resume("a")
        for a in accepted:
            got = await w.c.deliveries.wait(a[1]["delivery_id"], 5)
            assert got is not None and got.status is D.DONE
        await asyncio.sleep(0.3)  # the admission snapshot refreshes
        status, _, _ = await w.send(ws, "room again", message_id="m4")
        assert status == 200


async def test_admission_reads_every_queue_at_once_however_many_workspaces_share_sends() -> None:
    """Sends spread over many workspaces cost admission one store read per refresh, not one
    per workspace; a queue filled by another writer shows within the refresh."""
    async with world() as w:
        wss = [await w.create(f"w{i}", max_queue=2) for i in range(20)]
        store = w.c.deliveries._store
        reads = {"backlogs": 0, "pending": 0}
        for name in reads:
            real = getattr(store, name)

            def counted(*a: Any, _real: Any = real, _name: str = name) -> Any:
                reads[_name] += 1
                return _real(*a)

            setattr(store, name, counted)
        await asyncio.sleep(0.3)  # past any earlier read
        for ws in wss:
            assert (await w.send(ws, "hi", message_id="m0"))[0] == 200
        assert reads == {"backlogs": 1, "pending": 0}, reads
        await w.c.workspaces.pause("w3")
        for i in range(2):  # another replica's accepts, straight into the log
            now = time.time()
            await store.accept(make_d(wss[3].id, f"elsewhere{i}", created_at=now, updated_at=now))
        await asyncio.sleep(0.3)
        with pytest.raises(Overloaded):
            await w.send(wss[3], "one too many", message_id="m1", wait=0)
        assert reads["backlogs"] == 2


async def test_a_queue_whose_head_waited_too_long_refuses_new_messages() -> None:
    async with world() as w:
        ws = await w.create("a", max_queue_age=0.3)
        await w.c.workspaces.pause("a")
        assert (await w.send(ws, "first", message_id="m0", wait=0))[0] == 202
        await asyncio.sleep(0.6)
        with pytest.raises(Overloaded) as e:
            await w.send(ws, "late", message_id="m1", wait=0)
        assert "waited" in e.value.message


async def test_queue_limits_are_checked_at_create() -> None:
    async with world() as w:
        for bad in ({"max_queue": 0}, {"max_queue": "10"}, {"max_queue_age": -1}):
            with pytest.raises(InvalidInput):
                await w.c.workspaces.create({"name": "x", "command": ["agent"], **bad})


async def test_a_send_forwarded_and_settled_before_its_accept_returns_is_answered_at_once() -> None:
    """On PostgreSQL an accept may take several loop turns (a flush, a notice to other
    replicas) in which another task claims the message, forwards it and settles it. The
    caller's wait is registered before the accept, so the settle reaches it: answered at
    once, not at the waiter's next look at the store (2 s later: every send at c=16 on
    PostgreSQL took 2 s when the wait was registered after the accept)."""
    async with world() as w:
        ws = await w.create("a")
        store = w.store

        async def settled_meanwhile(d: Any, **kw: Any) -> Any:
            stored, created = await store.accept(d)  # left queued: the dispatcher takes it
            w.c.dispatcher.wake(d.workspace_id)
            for _ in range(200):
                if (await store.get_delivery(d.id)).status.final:
                    return stored, created, []
                await asyncio.sleep(0.005)
            raise AssertionError("the dispatcher did not settle the message")

        store.accept_claim = settled_meanwhile  # type: ignore[method-assign]
        started = time.monotonic()
        status, body, headers = await w.send(ws, "hi", message_id="m1", wait=10)
        assert status == 200 and body["result"]["message"]["parts"][0]["text"] == "echo: hi"
        assert time.monotonic() - started < 1.5  # the waiter's poll is 2 s
        assert w.c.deliveries._waiters._futs == {}  # nothing left registered


async def test_a_stopping_dispatcher_lets_forwards_finish_within_its_grace_then_gives_the_rest_back() -> (
    None
):
    """berth stopping: a forward that ends within the grace is settled as usual; one that
    does not is cut, and its delivery is queued again at once (this replica's lease given
    back, attempts unchanged), not left in flight until its lease runs out."""
    async with world() as w:
        ws = await w.create("g", max_concurrency=2)
        agent = w.agent(ws)
        _, quick, _ = await w.send(ws, "sleep:0.2 quick", message_id="q", wait=0)
        _, slow, _ = await w.send(ws, "sleep:4 slow", message_id="s", wait=0)
        for _ in range(250):
            if agent.running == 2:
                break
            await asyncio.sleep(0.02)
        assert agent.running == 2
        t0 = time.monotonic()
        await w.c.dispatcher.close(grace=1.0)
        assert 0.9 < time.monotonic() - t0 < 3  # the grace, not the slow one's 4 s
        done = await w.c.deliveries.get(quick["delivery_id"])
        assert done.status is D.DONE
        back = await w.c.deliveries.get(slow["delivery_id"])
        assert (back.status, back.lease_owner, back.attempts) == (D.QUEUED, None, 0)
        assert back.reason == "released by a stopping replica: redelivered"


async def test_leases_of_forwards_running_in_the_shutdown_grace_are_still_renewed() -> None:
    """The grace lets a forward finish: its lease must outlive the grace (upkeep renews it
    until the grace ends), else another replica takes the delivery over and forwards it a
    second time while the first still runs (found in review: upkeep stopped with claims)."""
    async with world(lease_seconds=1.5) as w:
        ws = await w.create("g", max_concurrency=1)
        agent = w.agent(ws)
        _, slow, _ = await w.send(ws, "sleep:3.5 slow", message_id="s", wait=0)
        for _ in range(250):
            if agent.running == 1:
                break
            await asyncio.sleep(0.02)
        closing = asyncio.create_task(w.c.dispatcher.close(grace=5.0))
        await asyncio.sleep(2.5)  # past a whole lease, inside the grace
        d = await w.c.deliveries.get(slow["delivery_id"])
        assert d.status is D.IN_FLIGHT
        assert d.lease_until is not None and d.lease_until > time.time(), "lease ran out"
        await closing
        done = await w.c.deliveries.get(slow["delivery_id"])
        assert done.status is D.DONE and done.forwards == 1
