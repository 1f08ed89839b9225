"""Issue #2 §1: sends from 8 concurrent callers while workspaces restart: nothing lost, each
message executed once."""

import asyncio
import random

import pytest

from tests.e2e.harness import BOTH_PATHS, create, executions, lane_served, reply_text, send

pytestmark = pytest.mark.slow


@BOTH_PATHS
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

        async def restart_three_times(ws: str) -> list[dict]:
            done = []
            for k in range(3):
                await asyncio.sleep(0.5)
                r = await c.post(f"/v1/workspaces/{ws}/restart", json={"reason": f"load test {k}"})
                assert r.status_code == 202, r.text
                rec = r.json()
                while rec["phase"] not in ("done", "failed"):
                    await asyncio.sleep(0.05)
                    rec = (await c.get(f"/v1/workspaces/{ws}/restarts/{rec['id']}")).json()
                done.append(rec)
            return done

        results = await asyncio.gather(
            *(caller(n) for n in range(8)), *(restart_three_times(w) for w in targets)
        )
        assert len(sent) == 8 * 14
        records = [r for group in results[-2:] for r in group]
        assert [r["phase"] for r in records] == ["done"] * 6, records
        assert sum(len(r["drain_report"]["completed"]) for r in records) >= 1, (
            "no restart hit in-flight work"
        )

        for ws in (a, b):
            info = (await c.get(f"/v1/workspaces/{ws['name']}")).json()
            assert info["restart_count"] == 3
            starts, dones = executions(info["state_dir"])
            mine = [m for m, w in sent.items() if w == ws["name"]]
            assert all(starts[m] == 1 for m in mine), {m: starts[m] for m in mine if starts[m] != 1}
            assert all(dones[m] == 1 for m in mine), {m: dones[m] for m in mine if dones[m] != 1}
        if berth_server.lane:  # the lane took part (a workspace restarting sends it to Python)
            assert lane_served(berth_server) > 0
