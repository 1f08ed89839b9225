"""Executions: counted, recorded, and ended in order when the process stops.

The stop, after the drain (which may have run out its window with work still running):

1. new sends are refused (the drain, if it was not running already), and every send still
   waiting for its execution is answered with the DRAINING refusal (berth holds the
   message and delivers it again; its response is not stored, so it runs again);
2. each execution still running is cancelled and awaited, with its bookkeeping (one the
   stop cut is recorded as cut, not ended); then a2a-sdk's handler closes (`aclose`);
3. the tasks of the cut executions are closed (`canceled`, `berth.interrupted`) while the
   task store is still open, and pending execution records are written;
4. only then may the dedupe and task stores close (the server's lifespan does that).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from a2a.helpers.proto_helpers import new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.tasks import TaskStore
from a2a.types import Role, TaskState, TaskStatus

from berth.sdk.dedupe import Dedupe
from berth.sdk.drain import Drain

log = logging.getLogger("berth.sdk")
__all__ = ["Counted", "Stop", "close_cut_task"]

_DONE, _CUT = "done", "cut"


class Counted(AgentExecutor):
    """The author's executor, with every execution counted (also work that outlives its request)
    and recorded, so that a task a stop cut short is closed when its message comes again."""

    def __init__(
        self, inner: AgentExecutor, drain: Drain, dedupe: Dedupe, store: TaskStore
    ) -> None:
        self.inner = inner
        self.drain = drain
        self.dedupe = dedupe
        self.store = store
        self.cutting = False  # set by the stop: a cancellation from now on is a cut
        self.cut: dict[str, str] = {}  # messageId -> task id, executions this stop cut
        self.running: set[asyncio.Task[Any]] = set()  # the tasks running `execute`

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        mid = (context.message.message_id if context.message else None) or context.task_id or "?"
        task_id = context.task_id or ""
        recorded = bool(context.message and context.message.message_id and task_id)
        if recorded:
            await self._close_cut_task(mid, context)
            self.dedupe.started(mid, task_id)
        self.drain.enter(mid)
        me = asyncio.current_task()
        if me is not None:
            self.running.add(me)
        try:
            await self.inner.execute(context, event_queue)
        except asyncio.CancelledError:
            if self.cutting and recorded:
                self.cut[mid] = task_id
                recorded = False  # cut, not ended: its task is closed as interrupted
            raise
        finally:
            self.running.discard(me)
            self.drain.leave(mid)
            if recorded:
                self.dedupe.ended(mid)

    async def _close_cut_task(self, mid: str, context: RequestContext) -> None:
        old_id = self.dedupe.cut_execution(mid)
        if old_id is None or old_id == context.task_id:
            return
        try:
            await close_cut_task(self.store, old_id, context.task_id, context.call_context)
        except Exception:  # noqa: BLE001 - bookkeeping must never stop the execution itself
            log.exception("could not close cut task %s", old_id)

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        await self.inner.cancel(context, event_queue)


class Stop:
    """Runs sends' a2a-sdk calls so that a stop can answer them, and performs the stop."""

    def __init__(
        self, counted: Counted, handler: DefaultRequestHandler, timeout: float = 10.0
    ) -> None:
        self._counted = counted
        self._handler = handler
        self._timeout = timeout
        self._waiting: dict[asyncio.Future[str], asyncio.Task[Any]] = {}
        self._cut_calls: list[asyncio.Task[Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def call(self, call: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
        """(True, result) of a2a-sdk's call, or (False, None) if a stop cut it first."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(call)
        waiter: asyncio.Future[str] = loop.create_future()

        def done(_: Any) -> None:
            if not waiter.done():
                waiter.set_result(_DONE)

        task.add_done_callback(done)
        self._waiting[waiter] = task
        try:
            how = await waiter
        except BaseException:
            task.cancel()  # the caller went away (or the server gave up on the request)
            raise
        finally:
            del self._waiting[waiter]
        if how == _CUT:
            self._cut_calls.append(task)
            task.cancel()
            return False, None
        return True, task.result()

    async def stop(self) -> None:
        """Cut what is still running and do its bookkeeping; once, however often called."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._task)

    async def _stop(self) -> None:
        counted = self._counted
        await counted.drain.drain(0)  # refuse new sends from now on (at once if drained already)
        counted.cutting = True
        for waiter, task in list(self._waiting.items()):
            # a call already done finished on its own, before anything was cut: its answer
            # stands; the others are answered DRAINING
            if not waiter.done() and not task.done():
                waiter.set_result(_CUT)
        # Cancel the executions themselves first: a2a-sdk then winds each task down its
        # ordinary way (queues closed gracefully, events already produced processed), which
        # its forced `aclose` does not (it warns about queues it closed under itself).
        running = list(counted.running)
        for t in running:
            t.cancel()
        if running:
            await asyncio.wait(running, timeout=self._timeout)
        try:
            await asyncio.wait_for(self._handler.aclose(), self._timeout)
        except TimeoutError:
            log.warning("executions did not end within %.0f s of being cancelled", self._timeout)
        left = [t for t in self._cut_calls if not t.done()]
        for t in left:
            t.cancel()  # a2a-sdk may have swallowed the first cancel while its queues were open
        if left:
            await asyncio.wait(left, timeout=self._timeout)
        for t in self._cut_calls:  # their outcome no longer matters: retrieve it, unlogged
            if t.done() and not t.cancelled():
                t.exception()
        counted.dedupe.flush()
        for mid, task_id in counted.cut.items():
            try:
                await close_cut_task(counted.store, task_id, None, None)
            except Exception as e:  # noqa: BLE001 - the next start closes it
                log.warning("could not close cut task %s now (%s); the next start will", task_id, e)
            log.info("execution of %s (task %s) cut by this stop", mid, task_id)


_TERMINAL = {
    TaskState.TASK_STATE_COMPLETED,
    TaskState.TASK_STATE_FAILED,
    TaskState.TASK_STATE_CANCELED,
    TaskState.TASK_STATE_REJECTED,
}


async def close_cut_task(
    store: TaskStore, task_id: str, restarted_as: str | None, call: ServerCallContext | None
) -> bool:
    """Close a task whose execution a stop cut short: state canceled, metadata
    `berth.interrupted: true` and, once its message runs again, `berth.restarted_as: <task id>`.
    A task that finished on its own is left alone. Returns whether the task was changed."""
    call = call or ServerCallContext()
    task = await store.get(task_id, call)
    if task is None:
        return False
    interrupted = task.metadata.fields.get("berth.interrupted") is not None
    if task.status.state in _TERMINAL and not interrupted:
        return False
    note = (
        f"interrupted by a restart of the workspace; continued as task {restarted_as}"
        if restarted_as
        else "interrupted by a restart of the workspace"
    )
    task.status.CopyFrom(
        TaskStatus(
            state=TaskState.TASK_STATE_CANCELED,
            message=new_text_message(
                note, context_id=task.context_id, task_id=task.id, role=Role.ROLE_AGENT
            ),
        )
    )
    task.metadata.update({"berth.interrupted": True})
    if restarted_as:
        task.metadata.update({"berth.restarted_as": restarted_as})
    await store.save(task, call)
    return True
