"""Reaching a workspace's agent: URL resolution (cache, then database), the Docker
rewrite, and the drain signal (the seed's change, completed)."""

from __future__ import annotations

import enum
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from berth.domain.workspace import Runtime, Workspace
from berth.ports import AgentClient, AgentUnreachable, Cache, Store
from berth.services.card import rest_url, with_origin
from berth.wire import container_name

log = logging.getLogger("berth.agent_link")
__all__ = ["AgentLink", "SignalOutcome", "SignalResult", "rewrite_for_docker", "url_cache_key"]

_LOOPBACK = re.compile(r"^http://(127\.0\.0\.1|localhost):(\d+)(/.*)?$")
URL_TTL = 300.0


def url_cache_key(ws_id: str) -> str:
    return f"agent-url:{ws_id}"


def rewrite_for_docker(url: str, ws: Workspace, berth_in_docker: bool) -> str:
    """`http://127.0.0.1:<port>` -> `http://ws-<id[:12]>:8000` when berth runs inside
    Docker and the workspace is a Docker one: the published loopback port is the host's,
    not berth's, so berth reaches the container by name on the shared network."""
    if not (berth_in_docker and ws.runtime is Runtime.DOCKER):
        return url  # every forward asks: the regex only where it can apply
    m = _LOOPBACK.match(url)
    if not m:
        return url
    return f"http://{container_name(ws.id, ws.version)}:8000{m.group(3) or ''}"


class SignalOutcome(str, enum.Enum):
    DRAINED = "drained"  # the agent answered with its drain report
    NO_DRAIN = "no_drain"  # 404/405/501: the agent has no drain; berth drains on its side
    UNREACHABLE = "unreachable"  # refused, timed out, broken: go on with the restart
    UNRESOLVED = "unresolved"  # no URL could be resolved: go on
    ERROR = "error"  # the agent answered something else: go on


@dataclass
class SignalResult:
    outcome: SignalOutcome
    report: dict[str, Any] = field(default_factory=dict)
    detail: str | None = None


class AgentLink:
    def __init__(self, store: Store, cache: Cache, client: AgentClient, *, in_docker: bool) -> None:
        self._store = store
        self._cache = cache
        self._client = client
        self._in_docker = in_docker

    async def remember(self, ws: Workspace) -> None:
        if ws.agent_url:
            try:
                await self._cache.set(url_cache_key(ws.id), ws.agent_url, URL_TTL)
            except Exception:
                log.warning("cache unavailable; agent URL not cached", exc_info=True)

    async def forget(self, ws_id: str) -> None:
        try:
            await self._cache.delete(url_cache_key(ws_id))
        except Exception:
            log.warning("cache unavailable; agent URL not dropped", exc_info=True)

    async def resolve(self, ws: Workspace) -> str | None:
        """The URL to reach the agent: the cache, else the database (and cache it again)."""
        url: str | None = None
        try:
            url = await self._cache.get(url_cache_key(ws.id))
        except Exception:
            log.warning("cache unavailable; falling back to the database", exc_info=True)
        if url is None:
            fresh = await self._store.get_workspace(ws.id)
            url = fresh.agent_url
            if url:
                await self.remember(fresh)
        return None if url is None else rewrite_for_docker(url, ws, self._in_docker)

    def target(self, ws: Workspace) -> str | None:
        """The URL for the hot path, from the workspace record already in hand."""
        return (
            None if ws.agent_url is None else rewrite_for_docker(ws.agent_url, ws, self._in_docker)
        )

    def rest_target(self, ws: Workspace, path: str) -> str | None:
        """The URL of `path` under the agent's HTTP+JSON interface (declared in its card),
        on the origin berth reaches the agent at; None without such an interface."""
        target = self.target(ws)
        url = rest_url(ws.agent_card)
        if target is None or url is None:
            return None
        return with_origin(url, target).rstrip("/") + path

    async def signal_restart(
        self,
        ws: Workspace,
        *,
        restart_id: str,
        drain_seconds: float,
        reason: str | None,
        margin: float = 5.0,
        url: str | None = None,
    ) -> SignalResult:
        """`url`: the instance to signal, when it is not the serving one (a deploy's old)."""
        try:
            url = rewrite_for_docker(url, ws, self._in_docker) if url else await self.resolve(ws)
        except Exception as e:  # a database error must not block the restart
            return SignalResult(SignalOutcome.UNRESOLVED, detail=f"url resolution failed: {e}")
        if not url:
            return SignalResult(SignalOutcome.UNRESOLVED, detail="no agent url known")
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": str(uuid.uuid4()),
                "method": "signals/restart_pending",
                "params": {
                    "workspace_id": ws.id,
                    "restart_id": restart_id,
                    "drain_seconds": drain_seconds,
                    "reason": reason,
                },
            }
        ).encode()
        try:
            reply = await self._client.post(
                url.rstrip("/") + "/signals/restart_pending",
                body,
                {"content-type": "application/json"},
                timeout=drain_seconds + margin,
            )
        except AgentUnreachable as e:
            return SignalResult(SignalOutcome.UNREACHABLE, detail=str(e))
        if reply.status in (404, 405, 501):
            return SignalResult(SignalOutcome.NO_DRAIN, detail=f"HTTP {reply.status}")
        report = _report(reply.body)
        if reply.status != 200 or report is None:
            return SignalResult(
                SignalOutcome.ERROR, detail=f"HTTP {reply.status}: {reply.body[:200]!r}"
            )
        return SignalResult(SignalOutcome.DRAINED, report=report)

    async def signal_resume(self, ws: Workspace) -> bool:
        """Tell an agent its drain is over (external workspaces); True if it answered."""
        url = self.target(ws)
        if not url:
            return False
        body = json.dumps(
            {"jsonrpc": "2.0", "id": "resume", "method": "signals/resume", "params": {}}
        )
        try:
            reply = await self._client.post(
                url.rstrip("/") + "/signals/resume",
                body.encode(),
                {"content-type": "application/json"},
                timeout=5.0,
            )
        except AgentUnreachable:
            log.info("resume signal to %s not delivered", ws.name)
            return False
        # a 404 is an agent without berth's signals (a stock A2A server): not an answer; it
        # comes online when berth's card probe finds it (services/probe.py)
        return reply.status < 400


def _report(body: bytes) -> dict[str, Any] | None:
    """The drain report, from a JSON-RPC response or a bare object."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("result"), dict):
        doc = doc["result"]
    return doc if isinstance(doc, dict) and "drained" in doc else None
