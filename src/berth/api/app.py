"""The ASGI application: routes, the one error mapping, and the lifespan that owns every
background loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from berth import __version__
from berth.api import (
    access,
    agents,
    errors,
    lookups,
    management,
    metrics_listener,
    openapi,
    operator,
    ui,
)
from berth.api.a2a import a2a_endpoint, agent_card_endpoint
from berth.api.a2a_rest import a2a_rest_endpoint
from berth.api.auth import require_admin
from berth.api.fast import App
from berth.api.limits import BodyLimit, require_token, token_matches
from berth.bootstrap import Container, build
from berth.eventlog import EventLog
from berth.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None, container: Container | None = None) -> FastAPI:
    c = container or build(settings or Settings.from_env())
    event_log = EventLog(c)
    if c.settings.openapi not in ("open", "admin", "off"):
        raise ValueError(f"BERTH_OPENAPI: open, admin or off, not {c.settings.openapi!r}")
    separate = c.settings.metrics_address  # /metrics on its own listen address
    if separate:
        metrics_listener.parse_address(separate)  # a bad one fails now, not at start

    async def metrics_body(accept: str | None) -> tuple[bytes, str]:
        depth: dict[str, float] = {}
        busy: dict[str, float] = {}
        age: dict[str, float] = {}
        backlogs = await c.deliveries.backlogs()
        for ws in c.roster.all():
            b = backlogs.get(ws.id)
            depth[ws.name] = float(b.queued) if b else 0.0
            busy[ws.name] = float(b.in_flight) if b else 0.0
            age[ws.name] = (b.oldest_wait or 0.0) if b else 0.0
        c.metrics.set_gauges("berth_queue_depth", depth)
        c.metrics.set_gauges("berth_in_flight", busy)
        c.metrics.set_gauges("berth_queue_age_seconds", age)
        return await c.metrics.render(accept)

    def may_scrape(authorization: str | None) -> bool:
        scheme, _, got = (authorization or "").partition(" ")
        token = got.strip() if scheme.lower() == "bearer" else None
        return token_matches(token, c.settings.metrics_token, c.admin_token)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        following = event_log.start()  # subscribed before the start, to log its recovery
        await c.start()
        scraper = (
            await metrics_listener.start(separate, metrics_body, may_scrape) if separate else None
        )
        app.state.ready = True
        if c.settings.demo:
            from berth.demo import ensure_demo

            await ensure_demo(c)
        try:
            yield
        finally:
            app.state.ready = False
            if scraper is not None:
                scraper.close()
            await c.stop()
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)

    app = App(
        title="berth",
        version=__version__,
        lifespan=lifespan,
        # the interactive docs load their assets from a CDN (blank offline): off; the
        # OpenAPI document itself is served at /openapi.json (BERTH_OPENAPI: open|admin|off)
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if c.settings.openapi == "open" else None,
        description="A control plane for A2A agent workspaces that never loses a message.",
    )
    app.state.berth = c
    app.state.event_log = event_log
    app.add_middleware(BodyLimit, limit=c.settings.max_body_bytes)
    app.state.ready = False
    errors.install(app)
    app.include_router(management.router)
    app.include_router(lookups.router)
    app.include_router(access.router)
    app.include_router(agents.router)
    app.include_router(operator.router)
    ui.install(app)
    openapi.install(app)  # security schemes and berth's error bodies (docs/security.md)
    if c.settings.openapi == "admin":

        @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_admin)])
        async def openapi_document() -> JSONResponse:
            return JSONResponse(app.openapi())

    for path in ("/v1/workspaces/{ref}/a2a", "/v1/workspaces/{ref}/a2a/"):
        app.router.routes.append(
            Route(path, a2a_endpoint, methods=["POST"], name="a2a" if path[-1] == "a" else None)
        )
    # the HTTP+JSON binding (before the card routes: its paths never end in agent-card.json)
    app.router.routes.append(
        Route(
            "/v1/workspaces/{ref}/a2a/rest/{path:path}",
            a2a_rest_endpoint,
            methods=["GET", "POST", "DELETE"],
        )
    )
    for path in (
        "/v1/workspaces/{ref}/.well-known/agent-card.json",
        "/v1/workspaces/{ref}/a2a/.well-known/agent-card.json",
    ):
        app.router.routes.append(Route(path, agent_card_endpoint, methods=["GET"]))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        ready = bool(request.app.state.ready)
        problem = None if ready else "starting"
        if ready:
            try:
                await asyncio.wait_for(c.store.ping(), 2.0)
            except Exception as e:  # noqa: BLE001 - any failure means not ready
                ready, problem = False, f"store: {e.__class__.__name__}: {e}"
        body = {"ready": ready} if ready else {"ready": False, "problem": problem}
        return JSONResponse(body, status_code=200 if ready else 503)

    if not separate:

        @app.get("/metrics", include_in_schema=False)
        async def metrics(request: Request) -> Response:
            require_token(request, c.settings.metrics_token, c.admin_token)
            body, content_type = await metrics_body(request.headers.get("accept"))
            return Response(body, media_type=content_type)

    return app
