"""/metrics on a listen address of its own (BERTH_METRICS_ADDRESS, api/metrics_listener.py):
the address it takes, and what it answers over a real loopback socket (tests/security
runs it inside a `berth serve`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from berth.api import metrics_listener
from tests.e2e.harness import free_port

TOKEN = "Bearer scrape-me"


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),
    ],
)
def test_an_address_is_host_and_port(value: str, parsed: tuple[str, int]) -> None:
    assert metrics_listener.parse_address(value) == parsed


@pytest.mark.parametrize(
    "value", ["9464", ":9464", "127.0.0.1", "127.0.0.1:", "host:0", "host:65536", "host:x"]
)
def test_a_bad_address_is_refused_naming_the_setting(value: str) -> None:
    with pytest.raises(ValueError, match="BERTH_METRICS_ADDRESS"):
        metrics_listener.parse_address(value)


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async def render(accept: str | None) -> tuple[bytes, str]:
        return f"seen_accept {accept!r}\n".encode(), "text/plain; version=0.0.4"

    p = free_port()
    server = await metrics_listener.start(f"127.0.0.1:{p}", render, lambda a: a == TOKEN)
    try:
        yield p
    finally:
        server.close()


async def ask(port: int, head: bytes, body: bytes = b"") -> bytes:
    """What the listener answers to `head` (and `body`, sent after it): the whole reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        if body:
            writer.write(body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_get_metrics_with_the_token_is_answered(port: int) -> None:
    got = await ask(
        port,
        f"GET /metrics?x=1 HTTP/1.1\r\nHost: m\r\nAuthorization: {TOKEN}\r\n"
        "Accept: application/openmetrics-text\r\n\r\n".encode(),
    )
    assert got.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-type: text/plain; version=0.0.4\r\n" in got
    assert got.endswith(b"seen_accept 'application/openmetrics-text'\n")
    assert b"connection: close\r\n" in got


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\n\r\n", b"401 Unauthorized"),
        (b"GET /metrics HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n", b"401 Unauthorized"),
        (b"GET /v1/workspaces HTTP/1.1\r\nAuthorization: Bearer scrape-me\r\n\r\n", b"404"),
        (b"GET / HTTP/1.1\r\n\r\n", b"404 Not Found"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405 Method Not Allowed"),
        (b"HEAD /metrics HTTP/1.1\r\n\r\n", b"405 Method Not Allowed"),
        (b"GET /metrics\r\n\r\n", b"400 Bad Request"),
        (b"GET /metrics HTTP/2.0\r\n\r\n", b"400 Bad Request"),
        (b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n", b"400"),
    ],
)
async def test_everything_else_is_refused(port: int, head: bytes, status: bytes) -> None:
    got = await ask(port, head)
    assert got.startswith(b"HTTP/1.1 " + status), got[:80]
    assert b"seen_accept" not in got
    assert (b"www-authenticate: Bearer\r\n" in got) == status.startswith(b"401")


@pytest.mark.parametrize("size", [10, 5_000_000])
async def test_a_request_with_a_body_is_refused_and_the_refusal_arrives(
    port: int, size: int
) -> None:
    """GET /metrics takes no body: 413, also when the body is large (the listener reads
    and drops it while it closes: it used to close at once, and the client got a reset)."""
    head = f"GET /metrics HTTP/1.1\r\nAuthorization: {TOKEN}\r\nContent-Length: {size}\r\n\r\n"
    got = await ask(port, head.encode(), b"x" * size)
    assert got.startswith(b"HTTP/1.1 413 "), got[:80]
    assert got.endswith(b"GET /metrics takes no body\n")
    chunked = f"GET /metrics HTTP/1.1\r\nAuthorization: {TOKEN}\r\n"
    chunked += "Transfer-Encoding: chunked\r\n\r\n"
    got = await ask(port, chunked.encode(), b"5\r\nhello\r\n0\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 413 "), got[:80]
