"""Streams through the lean client (adapters/agent_h1.py `H1Pool.stream`, read by
`HttpAgentClient.stream`), against raw agents on loopback: SSE split anywhere across
chunks, compressed, delimited by the connection's end, abandoned, too slow; a stream read
to its end leaves its connection for the next request. aiohttp still serves what the lean
client declines."""

from __future__ import annotations

import asyncio
import gzip

import pytest

from berth.ports import AgentUnreachable, StreamItem
from tests.unit.test_agent_h1 import agent, read_request

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


async def test_events_split_anywhere_across_chunks_and_the_connection_kept() -> None:
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head, _ = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
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
        assert client.h1.connections_made == 1  # the second stream reused the connection
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
        while True:
            try:
                head, _ = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
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
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(sse_head() + chunked([b'data: {"first": 1}\n\n'])[:-5])
            await writer.drain()
            await asyncio.sleep(30)  # the rest never comes

    async with agent(handle) as (url, client):
        async for item in client.stream(url, b"{}", {}, 5):
            assert item.data == b'{"first": 1}'
            break  # the dispatcher stops reading at a terminal event
        await asyncio.sleep(0.05)
        assert not client.h1._open  # closed, not kept with the rest of an answer unread
        with pytest.raises(AgentUnreachable) as slow:
            async for _ in client.stream(url, b"{}", {}, 0.3):
                pass
        assert slow.value.reached is True and "0.3 s" in str(slow.value)
        assert client.h1.connections_made == 2  # the abandoned one was not reused


async def test_a_header_the_lean_client_declines_goes_through_aiohttp() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(sse_head() + chunked([EVENTS]))
        await writer.drain()

    async with agent(handle) as (url, client):
        got = [i async for i in client.stream(url, b"{}", {"x-name": "caf\u00e9 \u2615"}, 5)]
        assert items(got) == WANT
        assert client.h1.connections_made == 0  # aiohttp wrote it
