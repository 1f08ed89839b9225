"""The AgentClient port over HTTP: requests and streams to `http://` agents through the
lean keep-alive client of `agent_h1` (a quarter of berth's loop CPU per message was
aiohttp's client, and it added ~0.5 ms to a stream's first event: docs/benchmarks.md);
`https://` and anything that client declines through pooled aiohttp."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator

import aiohttp

from berth.adapters.agent_h1 import H1Pool, h1_target
from berth.ports import AgentReply, AgentUnreachable, StreamItem

__all__ = ["HttpAgentClient"]


class HttpAgentClient:
    def __init__(self, *, pool_size: int = 256) -> None:
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None
        self.h1 = H1Pool(limit=pool_size)
        # streams hold their connections for as long as they last: a pool of their own, so
        # long streams never take the connections forwards and card reads need
        self.h1_streams = H1Pool(limit=pool_size)

    def _get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._pool_size, keepalive_timeout=30, use_dns_cache=True
                ),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float
    ) -> AgentReply:
        return await self._call("POST", url, body, headers, timeout)

    async def stream(
        self,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        timeout: float,
        *,
        method: str = "POST",
    ) -> AsyncIterator[StreamItem]:
        """SSE events as they arrive (`timeout` bounds the wait for each chunk, not the stream)."""
        target = h1_target(url)
        if target is not None:
            h = await self.h1_streams.stream(
                method, target, body, {**headers, "accept": "text/event-stream"}, timeout
            )
            if h is not None:
                try:
                    ctype = h.headers.get("content-type", "")
                    if not ctype.startswith("text/event-stream"):
                        yield StreamItem("reply", await h.read(), h.status, ctype)
                        return
                    async for item in _events(_lines(h.chunks())):
                        yield item
                finally:
                    h.close()
                return
        try:
            async with self._get().request(
                method,
                url,
                data=body,
                headers={**headers, "accept": "text/event-stream"},
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=timeout),
                allow_redirects=False,  # a redirect would bypass the agent URL policy
            ) as resp:
                ctype = resp.headers.get("content-type", "")
                if not ctype.startswith("text/event-stream"):
                    yield StreamItem("reply", await resp.read(), resp.status, ctype)
                    return
                async for item in _events(resp.content):
                    yield item
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise _unreachable(e) from e

    async def request(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> AgentReply:
        return await self._call(method, url, body, headers, timeout)

    async def get(self, url: str, headers: dict[str, str], timeout: float) -> AgentReply:
        return await self._call("GET", url, None, headers, timeout)

    async def _call(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> AgentReply:
        target = h1_target(url)
        if target is not None:
            reply = await self.h1.request(method, target, body, headers, timeout)
            if reply is not None:
                return reply
        try:
            async with self._get().request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,  # a redirect would bypass the agent URL policy
            ) as resp:
                data = await resp.read()
                return AgentReply(
                    resp.status,
                    data,
                    resp.headers.get("content-type", "application/json"),
                    {k.lower(): v for k, v in resp.headers.items()},
                )
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise _unreachable(e) from e

    async def close(self) -> None:
        await self.h1.close()
        await self.h1_streams.close()
        if self._session is not None:
            await self._session.close()


def _unreachable(e: BaseException) -> AgentUnreachable:
    # a connector error is raised before any byte of the request was sent
    return AgentUnreachable(
        f"{type(e).__name__}: {e}".rstrip(": "),
        reached=not isinstance(e, aiohttp.ClientConnectorError),
    )


MAX_SSE_LINE = 16 * 1024 * 1024  # an SSE line longer than this ends the stream as broken


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Lines (each with its newline; the last one as it ends) of a body read in chunks, as
    aiohttp's response content gives them; a line over MAX_SSE_LINE is refused (aiohttp
    refused them over 128 KiB) rather than held in memory whatever its size."""
    rest = b""
    async for chunk in chunks:
        rest += chunk
        if b"\n" not in chunk:
            if len(rest) > MAX_SSE_LINE:
                raise AgentUnreachable(
                    f"an SSE line from the agent over {MAX_SSE_LINE} bytes", reached=True
                )
            continue
        *whole, rest = rest.split(b"\n")
        for line in whole:
            yield line + b"\n"
    if rest:
        yield rest


async def _events(lines: AsyncIterable[bytes]) -> AsyncIterator[StreamItem]:
    """SSE events of a stream's lines: their data (lines joined) and name."""
    data: list[bytes] = []
    event: str | None = None
    async for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield StreamItem("event", b"\n".join(data), event=event)
            data, event = [], None
        elif line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode() or None
    if data:
        yield StreamItem("event", b"\n".join(data), event=event)
