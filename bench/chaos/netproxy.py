"""A small asyncio TCP proxy on loopback that can misbehave on demand.

`ChaosProxy` sits in front of one agent (berth is told the proxy's address as the agent's
URL). Its mode says what happens to traffic:

- `pass`: bytes flow both ways;
- `drop`: new connections are accepted and closed at once, nothing reaches the agent;
- `delay`: every chunk waits `delay` seconds before it is passed on;
- `reset()`: every open connection is reset now (RST, via SO_LINGER 0), in both directions.

`Balancer` is the same idea as a load balancer in front of several berth replicas: each
new connection goes to the next backend that accepts it, so agents that register and
heartbeat through it keep a way in while a replica is dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct

__all__ = ["Balancer", "ChaosProxy"]


def _abort(w: asyncio.StreamWriter) -> None:
    sock = w.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


class _Base:
    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.port = 0
        self.connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def reset(self) -> int:
        """Reset every open connection; how many there were."""
        n = len(self._conns)
        for a, b in list(self._conns):
            _abort(a)
            _abort(b)
        self._conns.clear()
        return n

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        raise NotImplementedError

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections += 1
        up = await self._connect()
        if up is None:
            _abort(cw)
            return
        ur, uw = up
        pair = (cw, uw)
        self._conns.add(pair)
        try:
            await asyncio.gather(self._pipe(cr, uw), self._pipe(ur, cw))
        finally:
            self._conns.discard(pair)
            for w in pair:
                w.close()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                await self._delay()
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                if w.can_write_eof():
                    w.write_eof()

    async def _delay(self) -> None:
        return None


class ChaosProxy(_Base):
    def __init__(self, target_port: int) -> None:
        super().__init__()
        self.target_port = target_port
        self.mode = "pass"
        self.delay = 0.0
        self.dropped = 0

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        if self.mode == "drop":
            self.dropped += 1
            return None
        try:
            return await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            return None

    async def _delay(self) -> None:
        if self.mode == "delay" and self.delay > 0:
            await asyncio.sleep(self.delay)


class Balancer(_Base):
    def __init__(self, ports: list[int]) -> None:
        super().__init__()
        self.ports = list(ports)
        self._next = itertools.cycle(range(len(ports)))

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.ports)):
            port = self.ports[next(self._next)]
            try:
                return await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
        return None
