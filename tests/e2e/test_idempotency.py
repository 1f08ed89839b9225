"""Issue #2 §4: the same messageId twice, in turn and at once: one execution, one reply."""

import asyncio

import pytest

from tests.e2e.harness import BOTH_PATHS, create, executions, lane_served, reply_text, send

pytestmark = pytest.mark.slow


@BOTH_PATHS
async def test_sequential_and_concurrent_duplicates(berth_server):
    async with berth_server.client() as c:
        ws = await create(c, "idem", max_concurrency=4)
        first = await send(c, "idem", "once", "dup-1", rid=1)
        again = await send(c, "idem", "once", "dup-1", rid="second-caller")
        assert first.status_code == again.status_code == 200
        assert reply_text(first.json()) == reply_text(again.json()) == "echo: once"
        assert again.json()["id"] == "second-caller" and first.json()["id"] == 1
        assert first.headers["x-berth-delivery-id"] == again.headers["x-berth-delivery-id"]

        together = await asyncio.gather(
            *(send(c, "idem", "sleep:0.3 twice", "dup-2", rid=i) for i in range(5))
        )
        assert {reply_text(r.json()) for r in together} == {"echo: sleep:0.3 twice"}
        assert len({r.headers["x-berth-delivery-id"] for r in together}) == 1
        assert [r.json()["id"] for r in together] == list(range(5))

        info = (await c.get("/v1/workspaces/idem")).json()
        starts, dones = executions(info["state_dir"])
        assert starts["dup-1"] == dones["dup-1"] == 1
        assert starts["dup-2"] == dones["dup-2"] == 1
        log = (await c.get("/v1/workspaces/idem/deliveries")).json()["deliveries"]
        assert sorted(d["message_id"] for d in log) == ["dup-1", "dup-2"]
        del ws
        if berth_server.lane:  # the first of each went through the lane, its duplicates not
            assert lane_served(berth_server) >= 1


@BOTH_PATHS
async def test_a_send_without_message_id_gets_one(berth_server):
    async with berth_server.client() as c:
        await create(c, "noid")
        body = {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "SendMessage",
            "params": {"message": {"role": "ROLE_USER", "parts": [{"text": "anon"}]}},
        }
        r = await c.post("/v1/workspaces/noid/a2a", json=body, headers={"a2a-version": "1.0"})
        assert r.status_code == 200 and reply_text(r.json()) == "echo: anon"
        assert len(r.headers["x-berth-message-id"]) >= 32


@BOTH_PATHS
async def test_wait_zero_gives_202_and_the_reply_is_readable_later(berth_server):
    async with berth_server.client() as c:
        await create(c, "later")
        r = await send(c, "later", "sleep:0.2 eventually", "later-1", wait=0)
        assert r.status_code == 202
        doc = r.json()
        assert (
            doc["status"] in ("queued", "in_flight")
            and doc["status_url"] == f"/v1/deliveries/{doc['delivery_id']}"
        )
        for _ in range(100):
            d = (await c.get(doc["status_url"])).json()
            if d["status"] == "done":
                break
            await asyncio.sleep(0.05)
        assert reply_text(d["reply"]) == "echo: sleep:0.2 eventually"
        # asking again with the same messageId returns the stored reply at once
        again = await send(c, "later", "sleep:0.2 eventually", "later-1", wait=0)
        assert again.status_code == 200 and reply_text(again.json()) == "echo: sleep:0.2 eventually"
