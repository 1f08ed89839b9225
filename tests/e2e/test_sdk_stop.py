"""Issue #12, the SDK's stop: a restart in the middle of a long message leaves a clean agent
log and takes one drain, not two (a real `berth serve`, a real echo agent process)."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from tests.e2e.harness import create, executions, reply_text, send

pytestmark = pytest.mark.slow

DRAIN = 4.0  # long enough that "one drain" and "two drains" cannot be confused
BAD_LINE = re.compile(r"Traceback|ERROR|Exception")


async def _wait_started(state_dir: str, mid: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while executions(state_dir)[0][mid] == 0:
        assert time.monotonic() < deadline, f"{mid} never started"
        await asyncio.sleep(0.05)


async def test_restart_mid_message_leaves_no_traceback_and_takes_one_drain(berth_server):
    async with berth_server.client() as c:
        await create(c, "cutme", drain_seconds=DRAIN)
        state = (await c.get("/v1/workspaces/cutme")).json()["state_dir"]
        text = f"task sleep:{DRAIN + 3:g} longer than the drain"
        slow = asyncio.create_task(send(c, "cutme", text, "cut-1"))
        await _wait_started(state, "cut-1")
        r = await c.post("/v1/workspaces/cutme/restart", json={"reason": "cut test"})
        assert r.status_code == 202, r.text
        rec = r.json()
        deadline = time.monotonic() + 60
        while rec["phase"] not in ("done", "failed"):
            assert time.monotonic() < deadline, rec
            await asyncio.sleep(0.1)
            rec = (await c.get(f"/v1/workspaces/cutme/restarts/{rec['id']}")).json()
        assert rec["phase"] == "done", rec
        seconds = {p["phase"]: p["seconds"] for p in rec["phases"]}
        # the agent's drain ran out its window with the message unfinished ...
        assert rec["drain_report"]["unfinished"] == ["cut-1"]
        assert DRAIN - 0.5 < seconds["draining"] < DRAIN + 3
        # ... and SIGTERM did not wait again: the process cut the message and exited, in
        # well under another drain window (before the fix: uvicorn's 5 s graceful timeout,
        # or a second drain_seconds when berth's drain had been answered by the deadline).
        # Most of what remains is the interpreter's own exit, ~1 s on a busy 2-core machine.
        assert seconds["stopping"] < DRAIN, seconds

        # the cut message was held, ran again on the new process, and its caller got the
        # whole answer once
        reply = await asyncio.wait_for(slow, 60)
        assert reply.status_code == 200, reply.text
        assert reply_text(reply.json()) == f"echo: {text}"
        assert reply.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
        starts, dones = executions(state)
        assert starts["cut-1"] == 2 and dones["cut-1"] == 1  # cut once, then ran whole

        # and the agent's log (both processes) has no traceback and no error line
        log = (await c.get("/v1/workspaces/cutme/logs", params={"tail": 100000})).text
        assert log.count("--- berth: starting") == 2, log
        bad = [line for line in log.splitlines() if BAD_LINE.search(line)]
        assert bad == [], log
