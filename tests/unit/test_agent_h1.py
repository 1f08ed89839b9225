"""The lean HTTP/1.1 client berth forwards with (adapters/agent_h1.py), against real
servers on loopback: an aiohttp app for well-behaved agents, raw asyncio servers for the
ones that misbehave. Each case is one a forward meets in practice."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from berth.adapters.agent_h1 import H1Pool, _encode_headers, h1_target
from berth.adapters.agent_http import HttpAgentClient
from berth.ports import AgentUnreachable
from tests.e2e.harness import serve_app

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def raw_server(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/a2a"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


@contextlib.asynccontextmanager
async def agent(handler: Handler) -> AsyncIterator[tuple[str, HttpAgentClient]]:
    """A scripted agent on loopback and a client for it, both closed afterwards."""
    server, url = await raw_server(handler)
    client = HttpAgentClient()
    try:
        yield url, client
    finally:
        server.close()
        await client.close()


def scripted(answer: Callable[[int], Awaitable[bytes]]) -> Handler:
    """A handler answering each request, on any connection, with `answer(n)` (n counts
    requests from 1 across connections), keeping connections alive."""
    n = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal n
        while True:
            try:
                await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            n += 1
            writer.write(await answer(n))
            await writer.drain()

    return handle


def echo_app(seen: list[web.Request]) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        seen.append(request)
        body = await request.read()
        if request.query.get("gzip"):
            return web.Response(
                body=gzip.compress(body),
                headers={"content-encoding": "gzip", "content-type": "application/json"},
            )
        if request.query.get("chunked"):
            resp = web.StreamResponse(headers={"content-type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(0, len(body), 7):
                await resp.write(body[i : i + 7])
            await resp.write_eof()
            return resp
        return web.Response(
            body=body,
            status=int(request.query.get("status", "200")),
            content_type="application/json",
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def test_forwards_the_body_and_headers_and_reuses_one_connection():
    seen: list[web.Request] = []
    runner, base = await serve_app(echo_app(seen))
    client = HttpAgentClient()
    try:
        for i in range(20):
            body = b'{"n": %d}' % i
            reply = await client.post(
                f"{base}/a2a", body, {"content-type": "application/json", "a2a-version": "1.0"}, 5
            )
            assert (reply.status, reply.body, reply.content_type) == (200, body, "application/json")
        assert client.h1.connections_made == 1  # keep-alive: one connection for all
        assert seen[-1].headers["a2a-version"] == "1.0"
        assert seen[-1].headers["host"] == base.removeprefix("http://")
        assert seen[-1].path == "/a2a"
    finally:
        await client.close()
        await runner.cleanup()


async def test_concurrent_requests_each_get_their_own_answer():
    seen: list[web.Request] = []
    runner, base = await serve_app(echo_app(seen))
    pool = H1Pool(limit=8)
    target = h1_target(f"{base}/x?q=1")
    assert target is not None
    try:
        bodies = [b"%d" % i * 50 for i in range(64)]
        replies = await asyncio.gather(*(pool.request("POST", target, b, {}, 5) for b in bodies))
        assert [r.body for r in replies if r] == bodies
        assert pool.connections_made <= 8  # never more open than the limit
        assert seen[0].query_string == "q=1"
    finally:
        await pool.close()
        await runner.cleanup()


async def test_chunked_gzip_large_and_error_answers():
    runner, base = await serve_app(echo_app([]))
    client = HttpAgentClient()
    try:
        big = b"x" * (3 * 1024 * 1024)
        assert (await client.post(f"{base}/a2a", big, {}, 10)).body == big
        chunked = await client.post(f"{base}/a2a?chunked=1", b"0123456789" * 5, {}, 5)
        assert chunked.body == b"0123456789" * 5
        zipped = await client.post(f"{base}/a2a?gzip=1", b'{"ok":1}', {}, 5)
        assert zipped.body == b'{"ok":1}'
        err = await client.post(f"{base}/a2a?status=503", b"{}", {}, 5)
        assert err.status == 503
        got = await client.get(f"{base}/.well-known/agent-card.json", {}, 5)
        assert got.status == 200 and got.body == b""
    finally:
        await client.close()
        await runner.cleanup()


async def test_refused_is_not_reached_and_a_hang_up_is():
    """Both clients: the lean one (a send's forward) and aiohttp (streams)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    client = HttpAgentClient()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.transport.abort()

    server, url = await raw_server(hang_up)
    try:
        with pytest.raises(AgentUnreachable) as refused:
            await client.post(f"http://127.0.0.1:{port}/", b"{}", {}, timeout=5)
        assert refused.value.reached is False
        with pytest.raises(AgentUnreachable) as cut:
            await client.post(url, b"{}", {}, timeout=5)
        assert cut.value.reached is True
        with pytest.raises(AgentUnreachable) as refused_stream:
            async for _ in client.stream(f"http://127.0.0.1:{port}/", b"{}", {}, 5):
                pass
        assert refused_stream.value.reached is False
        with pytest.raises(AgentUnreachable) as cut_stream:
            async for _ in client.stream(url, b"{}", {}, 5):
                pass
        assert cut_stream.value.reached is True
    finally:
        server.close()
        await client.close()


async def test_a_timeout_is_reached_and_the_connection_is_not_reused():
    async def slow_then_fast(n: int) -> bytes:
        if n == 1:
            await asyncio.sleep(1)  # past the caller's timeout
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async with agent(scripted(slow_then_fast)) as (url, client):
        with pytest.raises(AgentUnreachable) as late:
            await client.post(url, b"{}", {}, timeout=0.2)
        assert late.value.reached is True and "TimeoutError" in str(late.value)
        # the late answer must not be taken for the next request's
        reply = await client.post(url, b"{}", {}, timeout=5)
        assert reply.body == b"ok"
        assert client.h1.connections_made == 2


async def test_an_answer_ended_by_the_connection_close_and_a_malformed_one():
    async def close_delimited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    s1, url1 = await raw_server(close_delimited)
    s2, url2 = await raw_server(garbage)
    client = HttpAgentClient()
    try:
        reply = await client.post(url1, b"{}", {}, 5)
        assert (reply.status, reply.body, reply.content_type) == (
            200,
            b"until the end",
            "text/plain",
        )
        with pytest.raises(AgentUnreachable) as bad:
            await client.post(url2, b"{}", {}, 5)
        assert bad.value.reached is True
    finally:
        s1.close()
        s2.close()
        await client.close()


async def test_a_connection_the_agent_closed_while_idle_is_not_used_again():
    async def one_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # an idle keep-alive timeout, as uvicorn's after 5 s

    async with agent(one_per_connection) as (url, client):
        for _ in range(3):
            assert (await client.post(url, b"{}", {}, 5)).body == b"ok"
            await asyncio.sleep(0.2)
        assert client.h1.connections_made == 3


async def test_what_the_lean_client_declines_goes_through_aiohttp():
    assert h1_target("https://agent.example/a2a") is None
    assert h1_target("http://user:pw@127.0.0.1:1/") is None
    assert h1_target("http://127.0.0.1:1/a b") is None
    assert h1_target("http://[::1]:8080/x") == ("::1", 8080, b"/x", b"[::1]:8080")
    assert h1_target("http://agent/") == ("agent", 80, b"/", b"agent")
    seen: list[web.Request] = []
    runner, base = await serve_app(echo_app(seen))
    client = HttpAgentClient()
    try:
        # a header value HTTP forbids is never written by this client (no header injection)
        with pytest.raises((AgentUnreachable, ValueError)):
            await client.post(f"{base}/a2a", b"{}", {"x-evil": "a\r\nx-injected: 1"}, 5)
        assert not any("x-injected" in r.headers for r in seen)
        assert client.h1.connections_made == 0
    finally:
        await client.close()
        await runner.cleanup()


def test_header_lines_refuse_what_http_forbids_in_a_name_or_a_value() -> None:
    """CR, LF or NUL anywhere in a name or a value, or a colon in a name: no lines (the
    request goes to aiohttp, which refuses it); this client's own headers are left out."""
    assert _encode_headers({"X-A": "b", "Host": "h", "content-length": "9"}) == b"X-A: b\r\n"
    for bad in ("a\rb", "a\nb", "a\x00b", "\r", "ab\n"):
        assert _encode_headers({"x-ok": "v", "x-evil": bad}) is None
        assert _encode_headers({bad: "v"}) is None
    assert _encode_headers({"x:y": "v"}) is None
    assert _encode_headers({"x-name": "\u2603"}) is None  # not latin-1
    assert _encode_headers({"x-name": "caf\u00e9"}) == "x-name: caf\u00e9\r\n".encode("latin-1")


async def test_a_cancelled_forward_closes_its_connection():
    got_request = asyncio.Event()

    async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        got_request.set()
        await asyncio.sleep(10)

    async with agent(never_answers) as (url, client):
        task = asyncio.create_task(client.post(url, b"{}", {}, 30))
        await asyncio.wait_for(got_request.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not client.h1._open and not any(client.h1._idle.values())


async def test_head_goes_through_aiohttp_and_does_not_wait_for_a_body():
    runner, base = await serve_app(echo_app([]))
    client = HttpAgentClient()
    try:
        got = await asyncio.wait_for(client.request("HEAD", f"{base}/x", None, {}, 5), 2)
        assert got.status == 200 and got.body == b""
        assert client.h1.connections_made == 0
    finally:
        await client.close()
        await runner.cleanup()


async def test_a_reset_in_a_close_delimited_body_is_a_failure_not_an_answer():
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN

    async with agent(reset) as (url, client):
        with pytest.raises(AgentUnreachable) as cut:
            await client.post(url, b"{}", {}, 5)
        assert cut.value.reached is True


async def test_an_answer_nobody_asked_for_is_not_taken_for_the_next_one():
    async def two_answers(n: int) -> bytes:
        if n == 1:  # one request, two answers in one write
            return (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                b"HTTP/1.1 200 OK\r\nX-Evil: 1\r\nContent-Length: 3\r\n\r\nbad"
            )
        return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood"

    async with agent(scripted(two_answers)) as (url, client):
        first = await client.post(url, b"{}", {}, 5)
        assert first.body == b"ok" and "x-evil" not in first.headers
        second = await client.post(url, b"{}", {}, 5)
        assert second.body == b"good"
        assert client.h1.connections_made == 2  # the first connection was not reused


async def test_a_switch_of_protocols_is_a_failure(caplog: pytest.LogCaptureFixture):
    async def upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(1)

    async with agent(upgrade) as (url, client):
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            with pytest.raises(AgentUnreachable) as bad:
                await client.post(url, b"{}", {}, 5)
        assert bad.value.reached is True
        assert not caplog.records  # handled, not a protocol's "fatal error"


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def test_a_late_cancel_never_ends_the_next_request_on_the_connection():
    """A request answered, its connection already carrying the next caller's request: the
    first caller's cancel (or timer) must not touch the second's."""
    from berth.adapters.agent_h1 import _Conn

    pool = H1Pool()
    conn = _Conn(pool, ("127.0.0.1", 1))
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    conn.send(b"POST / HTTP/1.1\r\n\r\n", None, first)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert first.result().body == b"ok"
    conn.send(b"POST / HTTP/1.1\r\n\r\n", None, second)
    conn.abort(first, AgentUnreachable("the request was cancelled"))
    conn.time_out(first, 1.0)
    assert not second.done() and not conn.closed
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes")
    assert second.result().body == b"yes"


async def test_a_woken_waiter_that_leaves_passes_the_room_on():
    from berth.adapters.agent_h1 import _Conn

    pool = H1Pool(limit=1)
    key = ("127.0.0.1", 1)
    busy = _Conn(pool, key)
    busy.connection_made(_Transport())  # type: ignore[arg-type]
    pool._open.add(busy)
    loop = asyncio.get_running_loop()
    leaving = asyncio.create_task(pool._acquire(loop, key, loop.time() + 30))
    staying = asyncio.create_task(pool._acquire(loop, key, loop.time() + 30))
    await asyncio.sleep(0.01)
    assert len(pool._waiting) == 2
    pool._release(busy)  # wakes the first waiter...
    leaving.cancel()  # ...which leaves before it runs
    got = await asyncio.wait_for(staying, 1)  # the second gets the connection, not a timeout
    assert got is busy
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_a_connection_idle_past_the_reuse_limit_is_closed_not_reused():
    runner, base = await serve_app(echo_app([]))
    client = HttpAgentClient()
    client.h1._idle_reuse = 0.1
    try:
        assert (await client.post(f"{base}/a2a", b"1", {}, 5)).body == b"1"
        assert (await client.post(f"{base}/a2a", b"2", {}, 5)).body == b"2"
        assert client.h1.connections_made == 1  # reused while fresh
        await asyncio.sleep(0.2)
        assert (await client.post(f"{base}/a2a", b"3", {}, 5)).body == b"3"
        assert client.h1.connections_made == 2  # the stale one was closed, a new one made
        assert len(client.h1._open) == 1
    finally:
        await client.close()
        await runner.cleanup()
