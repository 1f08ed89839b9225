"""The AgentClient port on httpx: kept to measure against aiohttp (bench/proxy.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from berth.ports import AgentReply, AgentUnreachable, StreamItem

__all__ = ["HttpxAgentClient"]


class HttpxAgentClient:
    def __init__(self, *, pool_size: int = 256) -> None:
        self._client = httpx.AsyncClient(
            follow_redirects=False,  # a redirect would bypass the agent URL policy
            limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
        )

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
        try:
            async with self._client.stream(
                method,
                url,
                content=body,
                timeout=httpx.Timeout(timeout, connect=10),
                headers={**headers, "accept": "text/event-stream"},
            ) as r:
                ctype = r.headers.get("content-type", "")
                if not ctype.startswith("text/event-stream"):
                    yield StreamItem("reply", await r.aread(), r.status_code, ctype)
                    return
                data: list[str] = []
                event: str | None = None
                async for line in r.aiter_lines():
                    if not line:
                        if data:
                            yield StreamItem("event", "\n".join(data).encode(), event=event)
                        data, event = [], None
                    elif line.startswith("data:"):
                        data.append(line[5:].lstrip(" "))
                    elif line.startswith("event:"):
                        event = line[6:].strip() or None
                if data:
                    yield StreamItem("event", "\n".join(data).encode(), event=event)
        except httpx.HTTPError as e:
            raise AgentUnreachable(
                f"{type(e).__name__}: {e}".rstrip(": "),
                reached=not isinstance(e, httpx.ConnectError),
            ) from e

    async def request(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> AgentReply:
        return await self._call(method, url, body, headers, timeout)

    async def get(self, url: str, headers: dict[str, str], timeout: float) -> AgentReply:
        return await self._call("GET", url, None, headers, timeout)

    async def _call(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> AgentReply:
        try:
            r = await self._client.request(
                method, url, content=body, headers=headers, timeout=timeout
            )
        except httpx.HTTPError as e:
            raise AgentUnreachable(
                f"{type(e).__name__}: {e}".rstrip(": "),
                reached=not isinstance(e, httpx.ConnectError),
            ) from e
        return AgentReply(
            r.status_code,
            r.content,
            r.headers.get("content-type", "application/json"),
            {k.lower(): v for k, v in r.headers.items()},
        )

    async def close(self) -> None:
        await self._client.aclose()
