"""Lifecycle requests for a workspace another replica runs, handed to that replica.

A process or Docker workspace is started, stopped and watched only by the replica that owns
it (its agent runs there). A restart, deploy (or canary decision), pause, resume or removal
that reaches another replica is asked of the owner over the bus; the owner runs it and
answers, sending `working` while it runs. No word from the owner for ASK_SECONDS: it is down, and the request is refused
(503 `owner_unavailable`) rather than run where the agent is not (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from berth.domain import errors
from berth.domain.errors import BerthError, Unavailable
from berth.domain.workspace import Runtime, Workspace
from berth.ports import Bus

log = logging.getLogger("berth.handoff")
__all__ = ["ANSWER_TOPIC", "ASK_TOPIC", "Handoff", "Handler"]

ASK_TOPIC = "lifecycle.ask"  # {ask, to, op, workspace_id, args}
ANSWER_TOPIC = "lifecycle.answer"  # {ask, to, state: working|done, result | error}
ASK_SECONDS = 5.0  # the owner answers (or says `working`) within this, or it is down
RETRY_AFTER = 5.0

Handler = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


class Handoff:
    def __init__(self, bus: Bus, replica: str, *, shared: bool) -> None:
        """`shared`: other replicas share the store (on SQLite every workspace is ours)."""
        self._bus, self.replica, self._shared = bus, replica, shared
        self._asks: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def owner_elsewhere(self, ws: Workspace) -> str | None:
        """The replica that must run `ws`'s lifecycle, if it is not this one."""
        if not self._shared or ws.runtime is Runtime.EXTERNAL or ws.owner is None:
            return None
        return None if ws.owner == self.replica else ws.owner

    async def ask(self, owner: str, ws: Workspace, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run `op` on the owner; its result, or the error it raised."""
        ask_id = str(uuid.uuid4())
        answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._asks[ask_id] = answers
        try:
            payload = {"ask": ask_id, "to": owner, "from": self.replica, "op": op}
            try:
                await self._bus.publish(ASK_TOPIC, {**payload, "workspace_id": ws.id, "args": args})
            except Exception as e:  # noqa: BLE001 - any bus failure: the owner was not asked
                raise _down(ws, owner, f"it could not be asked ({e})") from None
            heard = False
            while True:
                try:
                    answer = await asyncio.wait_for(answers.get(), ASK_SECONDS)
                except TimeoutError:
                    why = "it stopped answering" if heard else "it did not answer"
                    raise _down(ws, owner, f"{why} within {ASK_SECONDS:g} s") from None
                heard = True
                if answer.get("state") == "done":
                    break
        finally:
            self._asks.pop(ask_id, None)
        if isinstance(err := answer.get("error"), dict):
            raise _rebuilt(err)
        result = answer.get("result")
        return result if isinstance(result, dict) else {}

    async def serve(self, handler: Handler) -> None:
        """Take asks addressed to this replica and route answers to waiting asks (a loop)."""
        sub = self._bus.subscribe(ASK_TOPIC, ANSWER_TOPIC)
        try:
            async for topic, msg in sub:
                if msg.get("to") != self.replica:
                    continue
                if topic == ANSWER_TOPIC:
                    if (q := self._asks.get(str(msg.get("ask")))) is not None:
                        q.put_nowait(msg)
                    continue
                task = asyncio.create_task(self._run(handler, msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            await sub.aclose()

    async def _run(self, handler: Handler, msg: dict[str, Any]) -> None:
        reply = {"ask": msg.get("ask"), "to": msg.get("from")}
        op, ws_id = str(msg.get("op")), str(msg.get("workspace_id"))

        async def working() -> None:
            while True:
                await self._answer({**reply, "state": "working"})
                await asyncio.sleep(ASK_SECONDS / 3)

        beat = asyncio.create_task(working())
        try:
            result = await handler(op, ws_id, dict(msg.get("args") or {}))
            done: dict[str, Any] = {**reply, "state": "done", "result": result}
        except BerthError as e:
            done = {**reply, "state": "done", "error": _shape(e)}
        except Exception as e:
            log.exception("%s of workspace %s asked by %s failed", op, ws_id, msg.get("from"))
            done = {**reply, "state": "done", "error": _shape(BerthError(repr(e)))}
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        await self._answer(done)

    async def _answer(self, payload: dict[str, Any]) -> None:
        try:
            await self._bus.publish(ANSWER_TOPIC, payload)
        except Exception:  # the asker times out and says the owner did not answer
            log.warning("could not answer %s", payload.get("ask"), exc_info=True)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _down(ws: Workspace, owner: str, why: str) -> Unavailable:
    return Unavailable(
        f"workspace {ws.name} is run by replica {owner}, and {why}: it may be down (it "
        "stops and starts its workspaces again when it returns); try again later",
        code="owner_unavailable",
    )


def _shape(e: BerthError) -> dict[str, Any]:
    return {"type": type(e).__name__, "code": e.code, "message": e.message}


def _rebuilt(err: dict[str, Any]) -> BerthError:
    """The owner's error as this replica raises it (same class and code where it can)."""
    cls = getattr(errors, str(err.get("type")), BerthError)
    message, code = str(err.get("message")), str(err.get("code"))
    if isinstance(cls, type) and issubclass(cls, BerthError):
        with contextlib.suppress(TypeError):
            return cls(message, code=code)
    return BerthError(message, code=code)
