"""Issue #2 §1: sends from 8 concurrent callers while workspaces restart: nothing lost, each
message executed once."""

import asyncio
import random

import pytest

from tests.e2e.harness import create, executions, reply_text, send

pytestmark = pytest.mark.slow


async def test_every_caller_answered_and_every_message_executed_once(berth_server):
    async with berth_server.client() as c:
        a = await create(c, "load-a", max_concurrency=2, drain_seconds=10)
        b = await create(c, "load-b", max_concurrency=1, drain_seconds=10)
        targets = ["load-a", "load-b"]
        sent: dict[str, str] = {}

        async def caller(n: int) -> None:
            rnd = random.Random(n)
            for i in range(14):
                text = f"{'sleep:0.4 ' if rnd.random() < 0.15 else ''}c{n}-{i}"
                ws = targets[(n + i) % 2]
                mid = f"{ws}-c{n}-{i}"
                r = await send(c, ws, text, mid)
                assert r.status_code == 200, r.text
                assert reply_text(r.json()) == f"echo: {text}"
                assert r.headers["x-berth-message-id"] == mid
                sent[mid] = ws

        async def restarter() -> list[dict]:
            records = []
            for k in range(3):
                await asyncio.sleep(0.6)
                for ws in targets:
                    r = await c.post(f"/v1/workspaces/{ws}/restart", json={"reason": f"load test {k}"})
                    assert r.status_code == 202, r.text
                    records.append(r.json())
            return records

        results = await asyncio.gather(*(caller(n) for n in range(8)), restarter())
        records = results[-1]
        assert len(sent) == 8 * 14

        # every restart cycle finished
        for rec in records:
            ws = rec["workspace_id"]
            for _ in range(200):
                r = (await c.get(f"/v1/workspaces/{ws}/restarts/{rec['id']}")).json()
                if r["phase"] in ("done", "failed"):
                    break
                await asyncio.sleep(0.1)
            assert r["phase"] == "done", r

        for ws in (a, b):
            info = (await c.get(f"/v1/workspaces/{ws['name']}")).json()
            assert info["restart_count"] >= 3
            starts, dones = executions(info["state_dir"])
            mine = [m for m, w in sent.items() if w == ws["name"]]
            assert all(starts[m] == 1 for m in mine), {m: starts[m] for m in mine if starts[m] != 1}
            assert all(dones[m] == 1 for m in mine), {m: dones[m] for m in mine if dones[m] != 1}
