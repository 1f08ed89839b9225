"""Streams through the lean client (adapters/agent_h1.py `H1Pool.stream`, read by
`HttpAgentClient.stream`), against raw agents on loopback: SSE split anywhere across
chunks, compressed, delimited by the connection's end, abandoned, too slow; a stream read
to its end leaves its connection for the next request. aiohttp still serves what the lean
client declines."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import pytest

from berth.adapters.agent_h1 import H1Pool, h1_target
from berth.adapters.agent_h1_body import STREAM_HIGH
from berth.ports import AgentUnreachable, StreamItem
from tests.unit.test_agent_h1 import agent, raw_server, read_request

EVENTS = (
    b'data: {"a": 1}\r\n\r\n'
    b"event: error\r\ndata: line one\r\ndata: line two\r\n\r\n"
    b": a comment\n\ndata:no space\n\n"
)
WANT = [
    ("event", None, b'{"a": 1}'),
    ("event", "error", b"line one\nline two"),
    ("event", None, b"no space"),
]


def chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def sse_head(extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n" + extra + b"\r\n"
    )


def items(got: list[StreamItem]) -> list[tuple[str, str | None, bytes]]:
    return [(i.kind, i.event, i.data) for i in got]


async def requests(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The head of each request on a kept-alive connection, until the client closes it."""
    while True:
        try:
            head, _ = await read_request(reader)
        except asyncio.IncompleteReadError:
            return
        yield head


async def test_events_split_anywhere_across_chunks_and_the_connection_kept() -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for head in requests(reader):
            seen.append(head)
            writer.write(sse_head())
            for i in range(0, len(EVENTS), 7):  # 7-byte chunks, each written alone
                writer.write(chunked([EVENTS[i : i + 7]])[: -len(b"0\r\n\r\n")])
                await writer.drain()
                await asyncio.sleep(0.001)
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    async with agent(handle) as (url, client):
        for _ in range(2):
            got = [i async for i in client.stream(url, b"{}", {"x-a": "1"}, 5)]
            assert items(got) == WANT
        assert client.h1_streams.connections_made == 1  # the second stream reused the connection
    assert b"accept: text/event-stream" in seen[0] and b"x-a: 1" in seen[0]


async def test_a_plain_answer_instead_of_a_stream_is_one_reply_item() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        body = b'{"error": {"code": 404}}'
        writer.write(
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()

    async with agent(handle) as (url, client):
        got = [i async for i in client.stream(url, None, {}, 5, method="GET")]
    assert [(g.kind, g.status, g.content_type, g.data) for g in got] == [
        ("reply", 404, "application/json", b'{"error": {"code": 404}}')
    ]


async def test_a_gzip_stream_and_one_ended_by_the_connection_are_read_whole() -> None:
    packed = gzip.compress(EVENTS)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for head in requests(reader):
            if b"/gz" in head.split(b"\r\n")[0]:
                writer.write(
                    sse_head(b"content-encoding: gzip\r\n") + chunked([packed[:9], packed[9:]])
                )
                await writer.drain()
                continue
            # no length, not chunked: the stream ends with the connection
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + EVENTS)
            await writer.drain()
            writer.close()
            return

    async with agent(handle) as (url, client):
        assert items([i async for i in client.stream(url + "/gz", b"{}", {}, 5)]) == WANT
        assert items([i async for i in client.stream(url, b"{}", {}, 5)]) == WANT


async def test_an_abandoned_stream_closes_its_connection_and_a_slow_one_times_out() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for _ in requests(reader):
            writer.write(sse_head() + chunked([b'data: {"first": 1}\n\n'])[:-5])
            await writer.drain()
            await asyncio.sleep(30)  # the rest never comes

    async with agent(handle) as (url, client):
        async for item in client.stream(url, b"{}", {}, 5):
            assert item.data == b'{"first": 1}'
            break  # the dispatcher stops reading at a terminal event
        await asyncio.sleep(0.05)
        assert not client.h1_streams._open  # closed, not kept with the rest of an answer unread
        with pytest.raises(AgentUnreachable) as slow:
            async for _ in client.stream(url, b"{}", {}, 0.3):
                pass
        assert slow.value.reached is True and "0.3 s" in str(slow.value)
        assert client.h1_streams.connections_made == 2  # the abandoned one was not reused


async def test_a_header_the_lean_client_declines_goes_through_aiohttp() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(sse_head() + chunked([EVENTS]))
        await writer.drain()

    async with agent(handle) as (url, client):
        got = [i async for i in client.stream(url, b"{}", {"x-name": "caf\u00e9 \u2615"}, 5)]
        assert items(got) == WANT
        assert client.h1_streams.connections_made == 0  # aiohttp wrote it


# found by a review of the first version ------------------------------------------------
async def test_long_streams_leave_the_connections_forwards_need() -> None:
    """Streams hold a connection for as long as they last: with every stream connection
    taken, a forward to the same agent still gets one."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for head in requests(reader):
            if b"text/event-stream" in head:
                writer.write(sse_head() + chunked([b'data: {"first": 1}\n\n'])[:-5])
                await writer.drain()
                await asyncio.sleep(30)  # a stream that goes on
                return
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
            await writer.drain()

    from berth.adapters.agent_http import HttpAgentClient

    server, url = await raw_server(handle)
    client = HttpAgentClient(pool_size=1)
    try:
        events = client.stream(url, b"{}", {}, 5).__aiter__()
        assert (await events.__anext__()).data == b'{"first": 1}'
        reply = await client.post(url, b"{}", {}, timeout=2)
        assert reply.status == 200
        await events.aclose()  # type: ignore[attr-defined]
    finally:
        server.close()
        await client.close()


async def test_a_reader_that_falls_behind_stops_the_connection_reading() -> None:
    event = b"data: " + b"x" * 60_000 + b"\n\n"
    sent = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(sse_head())
        for _ in range(400):  # 24 MB the reader does not take
            writer.write(chunked([event])[:-5])
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        sent.set()

    server, url = await raw_server(handle)
    pool = H1Pool()
    try:
        h = await pool.stream("POST", h1_target(url), b"{}", {}, 5)  # type: ignore[arg-type]
        assert h is not None
        chunks = h.chunks()
        await chunks.__anext__()
        await asyncio.sleep(1)
        assert h._sink.size < 4 * STREAM_HIGH  # the rest waits in TCP, not in berth
        assert not sent.is_set()
        got = 1
        async for _ in chunks:  # read on: it reads again, and all of it arrives
            got += 1
        assert sent.is_set() and got >= 400
        h.close()
    finally:
        server.close()
        await pool.close()


async def test_a_raw_deflate_reply_to_a_stream_request_is_read() -> None:
    import zlib

    body = b'{"error": {"code": 400, "message": "bad"}}'
    raw = zlib.compressobj(wbits=-15)
    packed = raw.compress(body) + raw.flush()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
            b"content-encoding: deflate\r\ncontent-length: %d\r\n\r\n%s" % (len(packed), packed)
        )
        await writer.drain()

    async with agent(handle) as (url, client):
        got = [i async for i in client.stream(url, b"{}", {}, 5)]
    assert [(g.kind, g.status, g.data) for g in got] == [("reply", 400, body)]


async def test_a_gzip_stream_cut_short_is_an_error_not_an_end() -> None:
    packed = gzip.compress(EVENTS)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"content-encoding: gzip\r\n\r\n" + packed[: len(packed) // 2]
        )
        await writer.drain()
        writer.close()  # the end of the connection ends the body: half of it

    async with agent(handle) as (url, client):
        with pytest.raises(AgentUnreachable) as cut:
            async for _ in client.stream(url, b"{}", {}, 5):
                pass
    assert "ended early" in str(cut.value)


async def test_a_stream_connect_gives_up_after_ten_seconds_not_the_whole_timeout() -> None:
    """A peer that never answers the connect (its SYNs dropped) fails a stream within
    STREAM_CONNECT_SECONDS, not after the stream's own (long) timeout."""
    import time

    from berth.adapters import agent_h1

    pool = H1Pool()
    started = time.monotonic()
    old = agent_h1.STREAM_CONNECT_SECONDS
    agent_h1.STREAM_CONNECT_SECONDS = 0.3

    async def never(*_: object, **__: object) -> None:
        await asyncio.sleep(60)  # a connect that hangs

    loop = asyncio.get_running_loop()
    real = loop.create_connection
    loop.create_connection = never  # type: ignore[method-assign, assignment]
    try:
        with pytest.raises(AgentUnreachable) as hung:
            await pool.stream("POST", ("127.0.0.1", 9, b"/", b"127.0.0.1:9"), b"{}", {}, 30)
        assert hung.value.reached is False
        assert time.monotonic() - started < 5
    finally:
        loop.create_connection = real  # type: ignore[method-assign]
        agent_h1.STREAM_CONNECT_SECONDS = old
        await pool.close()


async def test_an_sse_line_without_end_is_refused_past_its_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from berth.adapters import agent_http

    monkeypatch.setattr(agent_http, "MAX_SSE_LINE", 1000)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(sse_head() + chunked([b"data: " + b"y" * 600, b"y" * 600]))
        await writer.drain()

    async with agent(handle) as (url, client):
        with pytest.raises(AgentUnreachable) as long:
            async for _ in client.stream(url, b"{}", {}, 5):
                pass
    assert "over 1000 bytes" in str(long.value)
