"""Serving an a2a-sdk AgentExecutor the berth way: both method vocabularies, registration
and heartbeats, the drain signal, the DRAINING refusal, dedupe by messageId, a durable
task store, and SIGTERM as a drain followed by a clean stop (see executions.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

os.environ.setdefault(
    "OTEL_INSTRUMENTATION_A2A_SDK_ENABLED",
    "true" if os.environ.get("BERTH_OTEL") == "1" else "false",
)

import orjson  # noqa: E402
import uvicorn  # noqa: E402
from a2a.server.agent_execution import AgentExecutor  # noqa: E402
from a2a.server.request_handlers import DefaultRequestHandler  # noqa: E402
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes  # noqa: E402
from a2a.server.tasks import TaskStore  # noqa: E402
from a2a.types import AgentCard  # noqa: E402
from google.protobuf.json_format import MessageToDict  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402
from uvicorn.config import STARTUP_FAILURE  # noqa: E402

from berth.sdk.dedupe import Dedupe  # noqa: E402
from berth.sdk.drain import Drain  # noqa: E402
from berth.sdk.executions import Counted, Stop, close_cut_task  # noqa: E402
from berth.sdk.platform import Identity, Platform  # noqa: E402
from berth.sdk.replies import capture, replay, reply_key  # noqa: E402
from berth.sdk.tasks import durable_task_store  # noqa: E402
from berth.wire import SEND_METHODS, STREAM_METHODS, draining_error, rpc_error, rpc_result  # noqa: E402

log = logging.getLogger("berth.sdk")
__all__ = ["AgentRuntime", "build_app", "close_cut_task", "serve"]
_JSON = "application/json"


@dataclass
class AgentRuntime:
    ident: Identity
    drain: Drain
    dedupe: Dedupe
    platform: Platform
    app: Starlette
    stopper: Stop
    store: TaskStore

    async def stop(self) -> None:
        """End what the drain left running, with its bookkeeping, before the stores close.
        `serve` calls it after the drain; the app's lifespan calls it again (a no-op then)."""
        await self.stopper.stop()


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
    dedupe = Dedupe(ident.state_dir, shared=ident.shared_state)
    store, engine = durable_task_store(ident.state_dir, before_save=dedupe.flush)
    counted = Counted(executor, drain, dedupe, store)
    handler = DefaultRequestHandler(agent_executor=counted, task_store=store, agent_card=card)
    stopper = Stop(counted, handler)
    a2a = create_jsonrpc_routes(handler, rpc_url="/", enable_v0_3_compat=True)[0].endpoint
    platform = Platform(ident, drain, _card_dict(card), capabilities or {})

    async def rpc(request: Request) -> Response:
        raw = await request.body()
        try:
            doc = orjson.loads(raw)
        except ValueError:
            return await a2a(request)  # type: ignore[no-any-return]
        method = doc.get("method") if isinstance(doc, dict) else None
        if method not in SEND_METHODS and method not in STREAM_METHODS:
            return await a2a(request)  # type: ignore[no-any-return]
        rid = doc.get("id")
        params = doc.get("params")
        message = params.get("message") if isinstance(params, dict) else None
        mid = message.get("messageId") if isinstance(message, dict) else None
        if not isinstance(mid, str) or not mid:
            if drain.draining:
                return Response(draining_error(rid), media_type=_JSON)
            return await a2a(request)  # type: ignore[no-any-return]
        stream = method in STREAM_METHODS
        key = reply_key(mid, request.headers.get("x-berth-caller"))
        while (running := dedupe.running(key)) is not None:
            await asyncio.shield(running)
        stored = dedupe.lookup(key)
        if stored is not None:
            return replay(stored[1], rid, stream)
        if drain.draining:  # checked after the wait: a duplicate must not start during a stop
            return Response(draining_error(rid), media_type=_JSON)
        dedupe.begin(key)
        drain.enter(mid)
        try:
            answered, resp = await stopper.call(a2a(request))
        except BaseException:
            drain.leave(mid)
            dedupe.finish(key, method, None)
            raise
        if not answered:  # a stop cut its execution: berth holds it and delivers it again
            dedupe.finish(key, method, None)
            drain.leave(mid)
            return Response(draining_error(rid), media_type=_JSON)
        if not stream or not hasattr(resp, "body_iterator"):
            body = getattr(resp, "body", b"")
            keep = b'"jsonrpc"' in body and b"DRAINING" not in body
            dedupe.finish(key, method, body if keep else None)
            drain.leave(mid)
            return resp  # type: ignore[no-any-return]
        resp.body_iterator = capture(resp.body_iterator, mid, method, dedupe, drain, key=key)
        return resp  # type: ignore[no-any-return]

    async def restart_pending(request: Request) -> Response:
        try:
            doc = orjson.loads(await request.body())
        except ValueError:
            return Response(rpc_error(None, -32700, "parse error"), media_type=_JSON)
        if not isinstance(doc, dict) or doc.get("jsonrpc") != "2.0":
            return Response(rpc_error(None, -32600, "invalid request"), media_type=_JSON)
        params = doc.get("params") or {}
        seconds = (
            params.get("drain_seconds", ident.drain_seconds) if isinstance(params, dict) else None
        )
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
            return Response(
                rpc_error(doc.get("id"), -32602, "drain_seconds: a number >= 0"), media_type=_JSON
            )
        log.info("draining for %s (%s s)", params.get("reason"), seconds)
        report = await drain.drain(float(seconds))
        return Response(rpc_result(doc.get("id"), report.public()), media_type=_JSON)

    async def resume(request: Request) -> Response:
        drain.resume()
        try:
            rid = orjson.loads(await request.body()).get("id")
        except (ValueError, AttributeError):
            rid = None
        return Response(rpc_result(rid, {"resumed": True}), media_type=_JSON)

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
            # the order matters: cut executions do their bookkeeping in both stores first
            await stopper.stop()
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
    return AgentRuntime(ident, drain, dedupe, platform, app, stopper, store)


class _Server(uvicorn.Server):
    """SIGTERM drains first (refuse new sends, let in-flight work finish), then stops what is
    left cleanly (AgentRuntime.stop) and exits 0. A second SIGTERM or SIGINT exits at once.

    A drain berth already ran (the restart signal) is not run again: the SIGTERM's drain
    ends at the deadline that drain set, which has usually passed."""

    def __init__(self, config: uvicorn.Config, rt: AgentRuntime) -> None:
        super().__init__(config)
        self._rt = rt
        self._drain = rt.drain
        self._seconds = rt.ident.drain_seconds
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
        self._drain.exiting = True  # berth's heartbeat answer must not reopen it (platform.py)
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        try:
            report = await self._drain.drain(self._seconds)
            log.info("drained on signal: %s", report.public())
            await self._rt.stop()
        finally:
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
    # The port is bound before anything starts (uvicorn binds after the app's startup): a
    # port another program took fails here, before the platform could see that program
    # listening there and register it as this agent (berth would then forward this
    # workspace's messages to it). berth starts the agent again on another port.
    try:
        sock = _bind(host, rt.ident.port)
    except OSError as e:
        log.error("cannot listen on %s port %d: %s", host, rt.ident.port, e)
        sys.exit(STARTUP_FAILURE)
    rt.platform.bound = True
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
    _Server(config, rt).run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), as uvicorn would make it. A name is resolved to
    one address, IPv4 first (`localhost`: 127.0.0.1, where the default advertised URL
    points); "" binds every IPv4 interface."""
    found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = min(found, key=lambda a: a[0] != socket.AF_INET)
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _has(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except ImportError:
        return False
