"""Pass-through: requests that are not sends (GetTask, ListTasks, CancelTask, push configs,
SubscribeToTask, and their HTTP+JSON routes) go to the agent as they came, held while the
workspace restarts. A stream's status and content type follow the agent's first answer.
Also the agent card, fetched live from the agent when it is online."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from berth.domain.errors import AgentUnreachable, Unavailable
from berth.domain.lifecycle import WorkspaceState
from berth.domain.workspace import Workspace
from berth.ports import AgentClient, StreamItem
from berth.services.agent_link import AgentLink
from berth.services.bindings import FORWARDED_HEADERS, Binding, ProxyReply
from berth.services.card import ServedCard, rewrite_card, with_origin
from berth.services.roster import Roster
from berth.services.streams import sse

__all__ = ["Relay"]

CARD_PATH = "/.well-known/agent-card.json"
REPLY_HEADERS = ("a2a-extensions", "a2a-version")  # the agent's, passed back to the caller
CARD_TIMEOUT = 3.0


class Relay:
    def __init__(
        self, roster: Roster, client: AgentClient, link: AgentLink, *, timeout: float
    ) -> None:
        self._roster, self._client, self._link, self._timeout = roster, client, link, timeout

    def _url(self, ws: Workspace, path: str | None, how: Binding) -> str | None:
        return self._link.target(ws) if path is None else self._link.rest_target(ws, path)

    async def forward(
        self,
        ws: Workspace,
        raw: bytes | None,
        headers: dict[str, str],
        wait: float,
        *,
        stream: bool,
        method: str,
        path: str | None,
        how: Binding,
    ) -> ProxyReply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        fwd = {k: v for k, v in headers.items() if k in FORWARDED_HEADERS}
        if raw is not None:
            fwd.setdefault("content-type", "application/json")
        while True:
            current = self._roster.peek(ws.id) or ws
            url = self._url(current, path, how) if current.state is WorkspaceState.ONLINE else None
            if current.state is WorkspaceState.ONLINE and path is not None and url is None:
                status, body = how.error(
                    404, f"the agent of {ws.name} serves no HTTP+JSON interface", "NOT_FOUND"
                )
                return ProxyReply(status, body)
            if url is not None:
                try:
                    if stream:
                        return await self._stream(url, raw, fwd, method, how)
                    r = await self._client.request(method, url, raw, fwd, self._timeout)
                    kept = {k: v for k, v in r.headers.items() if k in REPLY_HEADERS}
                    return ProxyReply(r.status, r.body, kept, r.content_type)
                except AgentUnreachable:
                    pass  # the agent went away mid-request (a restart): held like the rest
            left = deadline - loop.time()
            if left <= 0:
                raise Unavailable(
                    f"workspace {ws.name} is {current.state.value}; try again",
                    code="workspace_unavailable",
                )
            await self._roster.wait_for(
                ws.id,
                lambda w: w is not None and w.state is WorkspaceState.ONLINE,
                min(left, 1.0),
            )

    async def _stream(
        self, url: str, raw: bytes | None, headers: dict[str, str], method: str, how: Binding
    ) -> ProxyReply:
        """The agent's stream (not logged: nothing to redeliver). Its first answer decides
        the reply: a plain answer (an unknown or terminal task) goes back as it came."""
        items = self._client.stream(url, raw, headers, self._timeout, method=method).__aiter__()
        try:
            first = await items.__anext__()
        except StopAsyncIteration:
            return ProxyReply(200, b"", {}, "text/event-stream", _empty())
        if first.kind == "reply":
            await _close(items)
            return ProxyReply(first.status, first.data, content_type=first.content_type)
        return ProxyReply(200, b"", {}, "text/event-stream", _rest_of(first, items, how))

    async def card(
        self,
        ws: Workspace,
        urls: dict[str, str],
        if_none_match: str | None,
    ) -> ServedCard | None:
        """The card as berth serves it: the agent's own, live, when it answers (with its
        caching headers); else the one it registered."""
        current = self._roster.peek(ws.id) or ws
        src: dict[str, Any] | None = current.agent_card
        agent_headers: dict[str, str] = {}
        target = self._link.target(current)
        if current.state is WorkspaceState.ONLINE and target is not None:
            try:
                r = await self._client.get(with_origin(CARD_PATH, target), {}, CARD_TIMEOUT)
                doc = orjson.loads(r.body) if r.status == 200 else None
                if isinstance(doc, dict):
                    src, agent_headers = doc, r.headers
            except (AgentUnreachable, orjson.JSONDecodeError):
                pass
        if not src:
            return None
        return ServedCard.build(rewrite_card(src, urls), agent_headers, if_none_match)


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover


async def _close(items: AsyncIterator[StreamItem]) -> None:
    aclose = getattr(items, "aclose", None)
    if aclose is not None:
        await aclose()


async def _rest_of(
    first: StreamItem, items: AsyncIterator[StreamItem], how: Binding
) -> AsyncIterator[bytes]:
    try:
        yield sse(first.data, first.event)
        async for item in items:
            yield sse(item.data, item.event)
            if item.kind == "reply":
                return
    except AgentUnreachable as e:
        yield sse(how.error(502, f"the agent's stream broke: {e}", "STREAM_BROKEN")[1])
    finally:
        await _close(items)
