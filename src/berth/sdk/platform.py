"""Talking to berth: registration and heartbeats, with the identity berth provides."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from berth.sdk.drain import Drain

log = logging.getLogger("berth.sdk")
__all__ = ["Identity", "Platform"]

LISTEN_WAIT = 30.0  # seconds registration waits for the agent's own port to accept connections
LISTEN_POLL = 0.02  # seconds between tries


@dataclass
class Identity:
    berth_url: str | None
    workspace_id: str | None
    token: str | None
    port: int
    state_dir: Path
    drain_seconds: float
    advertise_url: str
    max_concurrency: int | None
    shared_state: bool = False  # another version may run on the same state directory

    @classmethod
    def from_env(cls, port: int | None = None, drain_seconds: float | None = None) -> Identity:
        env = os.environ
        p = int(env.get("BERTH_PORT") or port or 8000)
        mc = env.get("BERTH_MAX_CONCURRENCY")
        return cls(
            berth_url=env.get("BERTH_URL") or None,
            workspace_id=env.get("BERTH_WORKSPACE_ID"),
            token=env.get("BERTH_WORKSPACE_TOKEN"),
            port=p,
            state_dir=Path(env.get("BERTH_STATE_DIR") or ".berth-state"),
            drain_seconds=float(env.get("BERTH_DRAIN_SECONDS") or drain_seconds or 30),
            advertise_url=env.get("BERTH_ADVERTISE_URL") or f"http://127.0.0.1:{p}",
            max_concurrency=int(mc) if mc else None,
            shared_state=env.get("BERTH_SHARED_STATE") == "1",
        )


class Platform:
    """Registers once the server listens (its port accepts connections), then heartbeats;
    never crashes the agent."""

    def __init__(
        self, ident: Identity, drain: Drain, card: dict[str, Any], capabilities: dict[str, Any]
    ) -> None:
        self.ident = ident
        self._drain = drain
        self._card = card
        self._caps = capabilities
        self.heartbeat_seconds = 2.0
        self.registered = asyncio.Event()
        # True when `serve` bound the agent's port itself before the app started: what
        # listens there is this agent, and registration need not wait to see it listen
        self.bound = False

    async def run(self) -> None:
        if not self.ident.berth_url:
            return
        await self._listening()
        headers = {"authorization": f"Bearer {self.ident.token}"}
        async with httpx.AsyncClient(
            base_url=self.ident.berth_url, headers=headers, timeout=10
        ) as c:
            await self._register(c)
            while True:
                await asyncio.sleep(self.heartbeat_seconds)
                try:
                    generation = self._drain.generation  # the drain this heartbeat reports
                    r = await c.post(
                        "/v1/agents/heartbeat",
                        json={
                            "active_tasks": len(self._drain.in_flight),
                            "draining": self._drain.draining,
                            "exiting": self._drain.exiting,
                            "in_flight": self._drain.in_flight,
                        },
                    )
                    doc = r.json() if r.status_code == 200 else {}
                    if "heartbeat_seconds" in doc:  # berth asks less often as it serves more
                        self.heartbeat_seconds = float(doc["heartbeat_seconds"])
                    self._resume_if_told(doc, generation)
                    if r.status_code in (404, 409) or doc.get("reregister"):
                        await self._register(c)
                    elif r.status_code == 401:
                        log.warning("berth refused this agent's token (a newer run replaced it)")
                except httpx.HTTPError as e:
                    log.info("heartbeat failed: %s", e)

    def _resume_if_told(self, doc: dict[str, Any], generation: int) -> None:
        """berth's answer says the drain it asked for is over (its resume signal was lost:
        the workspace is online and no restart runs). Never ends the process's own exit,
        nor a drain berth asked for after this heartbeat left (a new restart's)."""
        if (
            doc.get("resume") is True
            and self._drain.draining
            and not self._drain.exiting
            and self._drain.generation == generation
        ):
            log.warning("berth says the drain it asked for is over (its resume was lost): resuming")
            self._drain.resume()

    async def _listening(self) -> None:
        """Wait until the agent's port accepts connections. The app's lifespan starts this
        before the server binds its socket (uvicorn binds after the startup), and berth
        forwards as soon as the registration lands: sooner, its forward would find the port
        closed (connection refused: a forward that counts for nothing and a second's
        retry). A server bound elsewhere than loopback or all interfaces is never seen
        here: after LISTEN_WAIT the agent registers anyway."""
        if self.bound:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LISTEN_WAIT
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.ident.port)
            except OSError:
                if loop.time() >= deadline:
                    log.warning(
                        "port %d on 127.0.0.1 did not accept a connection in %g s; "
                        "registering anyway",
                        self.ident.port,
                        LISTEN_WAIT,
                    )
                    return
                await asyncio.sleep(LISTEN_POLL)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def _register(self, c: httpx.AsyncClient) -> None:
        body: dict[str, Any] = {
            "url": self.ident.advertise_url,
            "agent_card": self._card,
            "capabilities": self._caps,
        }
        if self.ident.max_concurrency:
            body["max_concurrency"] = self.ident.max_concurrency
        delay = 0.1
        while True:
            try:
                r = await c.post("/v1/agents/register", json=body)
                if r.status_code == 200:
                    self.heartbeat_seconds = float(r.json().get("heartbeat_seconds", 2.0))
                    self.registered.set()
                    return
                log.warning("register answered %s: %s", r.status_code, r.text[:200])
            except httpx.HTTPError as e:
                log.info("register failed: %s", e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
