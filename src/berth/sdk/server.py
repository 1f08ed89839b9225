"""Serving an a2a-sdk AgentExecutor the berth way: both method vocabularies, registration
and heartbeats, the drain signal, the DRAINING refusal, dedupe by messageId, a durable
task store, and SIGTERM as a drain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

os.environ.setdefault(
    "OTEL_INSTRUMENTATION_A2A_SDK_ENABLED",
    "true" if os.environ.get("BERTH_OTEL") == "1" else "false",
)

import uvicorn  # noqa: E402
from a2a.helpers.proto_helpers import new_text_message  # noqa: E402
from a2a.server.agent_execution import AgentExecutor, RequestContext  # noqa: E402
from a2a.server.context import ServerCallContext  # noqa: E402
from a2a.server.events import EventQueue  # noqa: E402
from a2a.server.request_handlers import DefaultRequestHandler  # noqa: E402
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes  # noqa: E402
from a2a.server.tasks import TaskStore  # noqa: E402
from a2a.types import AgentCard, Role, TaskState, TaskStatus  # noqa: E402
from google.protobuf.json_format import MessageToDict  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from berth.sdk.dedupe import Dedupe  # noqa: E402
from berth.sdk.drain import Drain  # noqa: E402
from berth.sdk.platform import Identity, Platform  # noqa: E402
from berth.sdk.protocol import SEND_METHODS, STREAM_METHODS, draining_error, rpc_error, rpc_result  # noqa: E402
from berth.sdk.tasks import durable_task_store  # noqa: E402

log = logging.getLogger("berth.sdk")
__all__ = ["AgentRuntime", "build_app", "close_cut_task", "serve"]


class _Counted(AgentExecutor):
    """The author's executor, with every execution counted (also work that outlives its request)
    and recorded, so that a task a stop cut short is closed when its message comes again."""

    def __init__(
        self, inner: AgentExecutor, drain: Drain, dedupe: Dedupe, store: TaskStore
    ) -> None:
        self.inner = inner
        self.drain = drain
        self.dedupe = dedupe
        self.store = store

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        mid = (context.message.message_id if context.message else None) or context.task_id or "?"
        recorded = bool(context.message and context.message.message_id and context.task_id)
        if recorded:
            await self._close_cut_task(mid, context)
            self.dedupe.started(mid, context.task_id or "")
        try:
            async with self.drain.working(mid):
                await self.inner.execute(context, event_queue)
        finally:
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


@dataclass
class AgentRuntime:
    ident: Identity
    drain: Drain
    dedupe: Dedupe
    platform: Platform
    app: Starlette


def _card_dict(card: AgentCard) -> dict[str, Any]:
    out: dict[str, Any] = MessageToDict(card)
    return out


def build_app(
    executor: AgentExecutor,
    card: AgentCard,
    *,
    port: int | None = None,
    drain_seconds: float | None = None,
    capabilities: dict[str, Any] | None = None,
) -> AgentRuntime:
    ident = Identity.from_env(port, drain_seconds)
    drain = Drain()
    dedupe = Dedupe(ident.state_dir)
    store, engine = durable_task_store(ident.state_dir)
    handler = DefaultRequestHandler(
        agent_executor=_Counted(executor, drain, dedupe, store), task_store=store, agent_card=card
    )
    a2a = create_jsonrpc_routes(handler, rpc_url="/", enable_v0_3_compat=True)[0].endpoint
    platform = Platform(ident, drain, _card_dict(card), capabilities or {})

    async def rpc(request: Request) -> Response:
        raw = await request.body()
        try:
            doc = json.loads(raw)
        except ValueError:
            return await a2a(request)  # type: ignore[no-any-return]
        method = doc.get("method") if isinstance(doc, dict) else None
        if method not in SEND_METHODS and method not in STREAM_METHODS:
            return await a2a(request)  # type: ignore[no-any-return]
        rid = doc.get("id")
        if drain.draining:
            return Response(draining_error(rid), media_type="application/json")
        params: dict[str, Any] = doc["params"] if isinstance(doc.get("params"), dict) else {}
        message: dict[str, Any] = (
            params["message"] if isinstance(params.get("message"), dict) else {}
        )
        mid = message.get("messageId")
        if not isinstance(mid, str) or not mid:
            return await a2a(request)  # type: ignore[no-any-return]
        stream = method in STREAM_METHODS
        while (running := dedupe.running(mid)) is not None:
            await asyncio.shield(running)
        stored = dedupe.lookup(mid)
        if stored is not None:
            return _replay(stored[1], rid, stream)
        dedupe.begin(mid)
        drain.enter(mid)
        try:
            resp = await a2a(request)
        except BaseException:
            drain.leave(mid)
            dedupe.finish(mid, method, None)
            raise
        if not stream or not hasattr(resp, "body_iterator"):
            body = getattr(resp, "body", b"")
            keep = b'"jsonrpc"' in body and b"DRAINING" not in body
            dedupe.finish(mid, method, body if keep else None)
            drain.leave(mid)
            return resp  # type: ignore[no-any-return]
        resp.body_iterator = _capture(resp.body_iterator, mid, method, dedupe, drain)
        return resp  # type: ignore[no-any-return]

    async def restart_pending(request: Request) -> Response:
        try:
            doc = json.loads(await request.body())
        except ValueError:
            return Response(rpc_error(None, -32700, "parse error"), media_type="application/json")
        if not isinstance(doc, dict) or doc.get("jsonrpc") != "2.0":
            return Response(
                rpc_error(None, -32600, "invalid request"), media_type="application/json"
            )
        params = doc.get("params") or {}
        seconds = (
            params.get("drain_seconds", ident.drain_seconds) if isinstance(params, dict) else None
        )
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
            return Response(
                rpc_error(doc.get("id"), -32602, "drain_seconds: a number >= 0"),
                media_type="application/json",
            )
        log.info("draining for %s (%s s)", params.get("reason"), seconds)
        report = await drain.drain(float(seconds))
        return Response(rpc_result(doc.get("id"), report.public()), media_type="application/json")

    async def resume(request: Request) -> Response:
        drain.resume()
        try:
            rid = json.loads(await request.body()).get("id")
        except (ValueError, AttributeError):
            rid = None
        return Response(rpc_result(rid, {"resumed": True}), media_type="application/json")

    async def healthz(_: Request) -> Response:
        return JSONResponse(
            {"status": "draining" if drain.draining else "ok", "in_flight": len(drain.in_flight)}
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await store.initialize()  # type: ignore[attr-defined]  # create the table once, before concurrent first requests race to
        for mid, task_id in dedupe.cut_executions():  # cut by the last stop: not `working` forever
            with contextlib.suppress(Exception):
                await close_cut_task(store, task_id, None, None)
            log.info("execution of %s (task %s) was cut by the last stop", mid, task_id)
        task = asyncio.create_task(platform.run())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await engine.dispose()
            dedupe.close()

    routes = [Route(p, rpc, methods=["POST"]) for p in ("/", "/a2a", "/a2a/")]
    routes += create_agent_card_routes(card)
    routes += [
        Route("/signals/restart_pending", restart_pending, methods=["POST"]),
        Route("/signals/resume", resume, methods=["POST"]),
        Route("/healthz", healthz),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    return AgentRuntime(ident, drain, dedupe, platform, app)


def _replay(body: bytes, rid: Any, stream: bool) -> Response:
    doc = json.loads(body)
    doc["id"] = rid
    if not stream:
        return JSONResponse(doc)
    data = json.dumps(doc)
    return Response(f"data: {data}\n\n", media_type="text/event-stream")


async def _capture(
    events: Any, mid: str, method: str, dedupe: Dedupe, drain: Drain
) -> AsyncIterator[Any]:
    last: str | None = None
    try:
        async for item in events:
            if isinstance(item, dict) and isinstance(item.get("data"), str):
                last = item["data"]
            yield item
    finally:
        done = last is not None and _final(last)
        dedupe.finish(mid, method, last.encode() if done and last else None)
        drain.leave(mid)


def _final(data: str) -> bool:
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    res = doc.get("result") if isinstance(doc, dict) else None
    if not isinstance(res, dict):
        return "error" in doc and "DRAINING" not in data
    if "message" in res or res.get("kind") == "message" or res.get("final") is True:
        return True
    for inner in (res.get("task"), res.get("statusUpdate"), res):
        state = (inner or {}).get("status", {}).get("state", "") if isinstance(inner, dict) else ""
        if state.replace("TASK_STATE_", "").lower().replace("_", "-") in (
            "completed",
            "failed",
            "canceled",
            "rejected",
            "input-required",
            "auth-required",
        ):
            return True
    return False


class _Server(uvicorn.Server):
    """SIGTERM drains first (refuse new sends, let in-flight work finish), then exits 0.
    A second SIGTERM or SIGINT exits at once."""

    def __init__(self, config: uvicorn.Config, drain: Drain, seconds: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._seconds = seconds
        self._draining = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()  # a drained exit is a clean exit, not a re-raised SIGTERM

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None:
            self.force_exit = self.should_exit = True
            return
        self._draining = True
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        report = await self._drain.drain(self._seconds)
        log.info("drained on signal: %s", report.public())
        self.should_exit = True


def serve(
    executor: AgentExecutor,
    card: AgentCard,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    drain_seconds: float | None = None,
    capabilities: dict[str, Any] | None = None,
) -> None:
    """Serve `executor` until SIGTERM (drained) or SIGINT; blocking."""
    rt = build_app(
        executor, card, port=port, drain_seconds=drain_seconds, capabilities=capabilities
    )
    loop = "uvloop" if _has("uvloop") else "asyncio"
    config = uvicorn.Config(
        rt.app,
        host=host,
        port=rt.ident.port,
        log_level="warning",
        loop=loop,
        http="httptools" if _has("httptools") else "h11",
        timeout_graceful_shutdown=5,
    )
    _Server(config, rt.drain, rt.ident.drain_seconds).run()


def _has(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except ImportError:
        return False
