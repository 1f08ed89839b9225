"""The chaos tool's TCP proxy really passes, drops, delays and resets traffic."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from bench.chaos.netproxy import Balancer, ChaosProxy


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(1024):
            w.write(data)
            await w.drain()
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _roundtrip(port: int, payload: bytes = b"ping") -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(payload)
        await w.drain()
        return await asyncio.wait_for(r.read(1024), 5)
    finally:
        w.close()


async def test_pass_drop_delay_and_reset():
    server, port = await _echo_server()
    proxy = ChaosProxy(port)
    await proxy.start()
    try:
        assert await _roundtrip(proxy.port) == b"ping"

        proxy.mode = "drop"
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            got = await _roundtrip(proxy.port)
            if got == b"":
                raise ConnectionResetError("closed without an answer")
        assert proxy.dropped == 1

        proxy.mode, proxy.delay = "delay", 0.3
        t0 = time.monotonic()
        assert await _roundtrip(proxy.port) == b"ping"
        assert time.monotonic() - t0 >= 0.55  # each way waits

        proxy.mode = "pass"
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        w.write(b"one")
        await w.drain()
        assert await r.read(16) == b"one"
        assert proxy.reset() == 1
        with pytest.raises(ConnectionError):
            if await asyncio.wait_for(r.read(16), 5) == b"":
                raise ConnectionResetError("closed")
        w.close()
        assert await _roundtrip(proxy.port) == b"ping"  # new connections pass again
    finally:
        await proxy.close()
        server.close()


async def test_the_balancer_skips_a_backend_that_is_down():
    server, port = await _echo_server()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    lb = Balancer([dead, port])
    await lb.start()
    try:
        for _ in range(4):
            assert await _roundtrip(lb.port) == b"ping"
    finally:
        await lb.close()
    lb = Balancer([dead])
    await lb.start()
    try:
        with pytest.raises(ConnectionError):  # nothing behind it: reset
            if await _roundtrip(lb.port) == b"":
                raise ConnectionResetError("closed")
    finally:
        await lb.close()
        server.close()
