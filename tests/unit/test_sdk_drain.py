"""The SDK's drain and tool gate, in one process."""

import asyncio
import time

from berth.sdk.drain import Drain, tool, tool_gate


async def test_drain_returns_as_soon_as_work_is_done_not_at_the_deadline():
    d = Drain()

    async def work(mid: str, seconds: float) -> None:
        async with d.working(mid):
            await asyncio.sleep(seconds)

    tasks = [asyncio.create_task(work("a", 0.1)), asyncio.create_task(work("b", 0.2))]
    await asyncio.sleep(0.01)
    t0 = time.monotonic()
    report = await d.drain(30)
    took = time.monotonic() - t0
    assert took < 1.0  # the deadline was 30 s: it waited for the work, not for the clock
    assert report.drained and report.in_flight == 0
    assert sorted(report.completed) == ["a", "b"] and report.unfinished == []
    await asyncio.gather(*tasks)


async def test_drain_deadline_reports_what_did_not_finish():
    d = Drain()

    async def work() -> None:
        async with d.working("slow"):
            await asyncio.sleep(5)

    t = asyncio.create_task(work())
    await asyncio.sleep(0.01)
    t0 = time.monotonic()
    report = await d.drain(0.2)
    assert 0.15 < time.monotonic() - t0 < 1.0
    assert not report.drained and report.in_flight == 1 and report.unfinished == ["slow"]
    t.cancel()


async def test_an_idle_agent_drains_at_once():
    report = await Drain().drain(10)
    assert report.drained and report.completed == [] and report.unfinished == []


async def test_the_same_message_counted_twice_is_in_flight_until_both_leave():
    d = Drain()
    d.enter("m")
    d.enter("m")
    d.leave("m")
    assert d.in_flight == ["m"]
    d.leave("m")
    assert d.in_flight == []


async def test_the_gate_stays_open_in_the_window_and_closes_at_the_deadline():
    d = Drain()
    passed: list[float] = []

    @tool
    async def side_effect() -> None:
        passed.append(time.monotonic())

    t0 = time.monotonic()
    drain = asyncio.create_task(d.drain(0.3))
    await asyncio.sleep(0.05)
    await side_effect()  # inside the window: work in flight may still call tools
    assert len(passed) == 1
    await drain
    await asyncio.sleep(max(0.0, t0 + 0.35 - time.monotonic()))
    late = asyncio.create_task(side_effect())
    await asyncio.sleep(0.2)
    assert not late.done() and len(passed) == 1  # after the deadline: the call waits at the gate
    d.resume()
    await asyncio.wait_for(late, 1)
    assert len(passed) == 2 and passed[1] - t0 >= 0.5


async def test_tool_gate_without_a_drain_is_a_no_op():
    # a fresh process-level drain that is not draining lets calls straight through
    Drain()
    async with tool_gate():
        pass


async def test_resume_after_a_drain_accepts_work_again():
    d = Drain()
    await d.drain(0)
    assert d.draining
    d.resume()
    assert not d.draining and d.deadline is None
    async with d.gate():
        pass
