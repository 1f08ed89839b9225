"""`/metrics` on a listen address of its own (BERTH_METRICS_ADDRESS, `host:port`): a
minimal HTTP/1.1 server for the scraper, so the metrics need not share berth's address.
It answers `GET /metrics` (with the metrics token when one is set) and nothing else;
one request per connection. `GET /metrics` takes no body: a request that declares one is
refused (413), and what it sends is read and dropped for a moment before the connection
closes, so that the refusal reaches the client rather than a connection reset."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

__all__ = ["parse_address", "start"]

Render = Callable[[str | None], Awaitable[tuple[bytes, str]]]
Allowed = Callable[[str | None], bool]  # the Authorization header -> may scrape
MAX_HEAD = 16 * 1024
READ_TIMEOUT = 10.0
LINGER = 1.0  # seconds to drop a refused body for before closing


def parse_address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"BERTH_METRICS_ADDRESS: {value!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _response(status: str, body: bytes, ctype: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n"
    )
    if status.startswith("401"):
        head += "www-authenticate: Bearer\r\n"
    return head.encode() + b"\r\n" + body


TOO_LARGE = _response("413 Content Too Large", b"GET /metrics takes no body\n")


async def _answer(head: bytes, render: Render, allowed: Allowed) -> bytes:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return _response("400 Bad Request", b"bad request\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if _has_body(headers):  # first, as berth's own port refuses a body over its limit
        return TOO_LARGE
    method, target = parts[0], parts[1].split("?", 1)[0]
    if target != "/metrics":
        return _response("404 Not Found", b"only /metrics is served here\n")
    if method != "GET":
        return _response("405 Method Not Allowed", b"GET /metrics\n")
    if not allowed(headers.get("authorization")):
        return _response("401 Unauthorized", b"a token is required (Authorization: Bearer ...)\n")
    body, ctype = await render(headers.get("accept"))
    return _response("200 OK", body, ctype)


def _has_body(headers: dict[str, str]) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0") != "0"


async def _drop(reader: asyncio.StreamReader) -> None:
    """Read and drop what the client still sends, for LINGER s at most: closing with
    unread data would reset the connection, and the client could lose the answer."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(LINGER):
            while await reader.read(64 * 1024):
                pass


async def start(address: str, render: Render, allowed: Allowed) -> asyncio.Server:
    host, port = parse_address(address)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            answer = await _answer(head[:-4], render, allowed)
            writer.write(answer)
            await writer.drain()
            if answer is TOO_LARGE:
                writer.write_eof()
                await _drop(reader)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            writer.write(_response("400 Bad Request", b"bad request\n"))
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=MAX_HEAD)
