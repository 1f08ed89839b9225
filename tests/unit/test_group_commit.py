"""GroupCommit on its own: who is batched with whom, and what each caller gets back."""

from __future__ import annotations

import asyncio

import pytest

from berth.adapters.sql.group_commit import GroupCommit
from berth.domain.errors import StoreUnavailable


class Op:
    """A store operation whose flushes are recorded; a flush ends when `gate` is set."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_many: Exception | None = None
        self.bad = "bad"  # an item whose single run raises

    async def many(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.fail_many is not None:
            raise self.fail_many
        return [f"{i}!" for i in items]

    async def one(self, item: str) -> str:
        self.batches.append([item])
        await self.gate.wait()
        if item.startswith(self.bad):
            raise ValueError(item)
        return f"{item}!"


def gc(op: Op, **kw: int) -> GroupCommit[str, str]:
    return GroupCommit(op.many, op.one, key=lambda s: s.split(":")[0], **kw)


async def test_a_lone_call_runs_at_once_alone() -> None:
    op = Op()
    g = gc(op)
    assert await asyncio.wait_for(g("a"), 1) == "a!"
    assert op.batches == [["a"]] and (g.batches, g.items) == (1, 1)


async def test_calls_made_during_a_flush_go_together_in_the_next() -> None:
    op = Op()
    op.gate.clear()
    g = gc(op)
    first = asyncio.create_task(g("a"))
    await asyncio.sleep(0.01)  # the first flush is running, held by the gate
    rest = [asyncio.create_task(g(x)) for x in "bcde"]
    await asyncio.sleep(0.01)
    assert op.batches == [["a"]]
    op.gate.set()
    assert await first == "a!" and await asyncio.gather(*rest) == ["b!", "c!", "d!", "e!"]
    assert op.batches == [["a"], ["b", "c", "d", "e"]]


async def test_one_item_per_key_and_at_most_max_batch_per_flush() -> None:
    op = Op()
    g = gc(op, max_batch=3)
    got = await asyncio.gather(*(g(x) for x in ["a:1", "b", "a:2", "c", "d", "a:3"]))
    assert got == ["a:1!", "b!", "a:2!", "c!", "d!", "a:3!"]
    assert op.batches == [["a:1", "b", "c"], ["a:2", "d"], ["a:3"]]


async def test_a_failed_batch_runs_each_item_alone() -> None:
    op = Op()
    op.fail_many = RuntimeError("one row broke the statement")
    g = gc(op)
    got = await asyncio.gather(*(g(x) for x in ["a", "bad", "c"]), return_exceptions=True)
    assert got[0] == "a!" and got[2] == "c!"
    assert isinstance(got[1], ValueError) and str(got[1]) == "bad"
    assert op.batches == [["a", "bad", "c"], ["a"], ["bad"], ["c"]] and g.retried == 3


async def test_store_unavailable_reaches_every_caller_of_the_batch() -> None:
    op = Op()
    op.fail_many = StoreUnavailable("the database is unavailable")
    g = gc(op)
    got = await asyncio.gather(*(g(x) for x in "abc"), return_exceptions=True)
    assert all(isinstance(e, StoreUnavailable) for e in got)
    assert op.batches == [["a", "b", "c"]]  # not retried one by one


async def test_a_cancelled_caller_leaves_the_others_and_its_item_runs() -> None:
    op = Op()
    op.gate.clear()
    g = gc(op)
    calls = [asyncio.create_task(g(x)) for x in "abc"]
    await asyncio.sleep(0.01)
    calls[1].cancel()
    op.gate.set()
    assert await calls[0] == "a!" and await calls[2] == "c!"
    with pytest.raises(asyncio.CancelledError):
        await calls[1]
    assert op.batches == [["a", "b", "c"]]


async def test_off_runs_every_call_alone_and_idle_waits_for_flushes() -> None:
    op = Op()
    op.gate.clear()
    off = gc(op, max_batch=1)
    calls = [asyncio.create_task(off(x)) for x in "ab"]
    await asyncio.sleep(0.01)
    assert op.batches == [["a"], ["b"]]  # both running at once, neither waits for the other
    op.gate.set()
    assert await asyncio.gather(*calls) == ["a!", "b!"] and off.batches == 2
    op.gate.clear()
    g = gc(op)
    call = asyncio.create_task(g("c"))
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(g.idle())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    op.gate.set()
    await asyncio.wait_for(waiter, 1)
    assert call.done() and call.result() == "c!"


async def test_a_call_right_after_a_flush_ends_is_not_stranded() -> None:
    op = Op()
    g = gc(op)
    for _ in range(50):  # calls land just as the previous drain is finishing
        got = await asyncio.wait_for(asyncio.gather(g("a"), g("b")), 1)
        assert got == ["a!", "b!"]
        assert await asyncio.wait_for(g("c"), 1) == "c!"


async def test_lanes_flush_side_by_side_but_never_a_key_twice_at_once() -> None:
    op = Op()
    op.gate.clear()
    g = gc(op, lanes=2)
    first = asyncio.create_task(g("a:1"))
    await asyncio.sleep(0.01)
    rest = [asyncio.create_task(g(x)) for x in ["b", "a:2", "c"]]
    await asyncio.sleep(0.01)
    assert op.batches == [["a:1"], ["b", "c"]]  # a second lane runs; a:2 waits for a:1's
    op.gate.set()
    assert await first == "a:1!" and await asyncio.gather(*rest) == ["b!", "a:2!", "c!"]
    assert op.batches[2:] == [["a:2"]]
