"""The body side of berth's lean HTTP/1.1 client (`agent_h1`): an answer the agent
compressed, decoded (whole or as it comes), and a stream's answer read as it comes, with
back-pressure on its connection (`Sink`, filled by the connection's parser callbacks;
`H1Stream`, what `H1Pool.stream` hands its caller)."""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from berth.ports import AgentUnreachable

if TYPE_CHECKING:
    from berth.adapters.agent_h1 import _Conn

__all__ = ["STREAM_HIGH", "STREAM_LOW", "H1Stream", "Inflate", "Sink"]


class Inflate:
    """A body the agent compressed (`content-encoding` gzip or deflate), decoded as it
    comes. One whose first bytes do not decode as declared is read as raw deflate, as
    some servers send it."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._d = zlib.decompressobj(15 if coding == "deflate" else 47)
        self.fed = False

    @classmethod
    def of(cls, headers: dict[str, str]) -> Inflate | None:
        coding = headers.get("content-encoding", "").strip().lower()
        return cls(coding) if coding in ("gzip", "deflate", "x-gzip") else None

    def feed(self, data: bytes) -> bytes:
        """The bytes `data` decodes to; zlib.error when it is corrupt."""
        first, self.fed = not self.fed, True
        try:
            return self._d.decompress(data)
        except zlib.error:
            if not first:
                raise
            self._d = zlib.decompressobj(-15)
            return self._d.decompress(data)

    @property
    def eof(self) -> bool:
        return self._d.eof

    def whole(self, body: bytes) -> bytes:
        """A whole body, decoded; zlib.error when it is corrupt or cut short."""
        out = self.feed(body)
        if not self.eof:
            raise zlib.error("incomplete or truncated stream")
        return out

    def corrupt(self, e: zlib.error) -> AgentUnreachable:
        return AgentUnreachable(f"the agent's {self.coding} body is corrupt: {e}", reached=True)


STREAM_HIGH = 256 * 1024  # a stream's bytes buffered before its connection stops reading
STREAM_LOW = 64 * 1024  # and below which it reads again


class Sink:
    """A stream's answer as its connection parses it: the head (status, headers) once,
    then body chunks, then its end or an error; read by `H1Stream`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport) -> None:
        self.head: asyncio.Future[tuple[int, dict[str, str]]] = loop.create_future()
        self.chunks: deque[bytes] = deque()
        self.size = 0  # bytes in `chunks`
        self.over = False
        self.error: AgentUnreachable | None = None
        self._wake: asyncio.Future[None] | None = None
        # back-pressure: past HIGH buffered bytes the connection stops reading (the agent's
        # writes wait in TCP) until the reader is down to LOW, as aiohttp's reader did
        self._transport = transport
        self.paused = False

    def begin(self, status: int, headers: dict[str, str]) -> None:
        if not self.head.done():
            self.head.set_result((status, headers))

    def chunk(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > STREAM_HIGH and not self.paused and not self._transport.is_closing():
            self._transport.pause_reading()
            self.paused = True
        self._poke()

    def end(self) -> None:
        self.over = True
        self._resume()  # the whole answer is in: the connection may carry the next one
        self._poke()

    def _resume(self) -> None:
        if self.paused:
            self.paused = False
            if not self._transport.is_closing():
                self._transport.resume_reading()

    def fail(self, e: AgentUnreachable) -> None:
        if not self.head.done():
            self.head.set_exception(e)
        elif not self.over:
            self.error, self.over = e, True
        self._poke()

    def _poke(self) -> None:
        w, self._wake = self._wake, None
        if w is not None and not w.done():
            w.set_result(None)

    async def next(self, timeout: float) -> bytes | None:
        """The next body chunk; None at the end; AgentUnreachable after `timeout` seconds
        without one, or when the connection failed."""
        while not self.chunks:
            if self.over:
                if self.error is not None:
                    raise self.error
                return None
            self._wake = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake
            except TimeoutError:
                raise AgentUnreachable(
                    f"TimeoutError: nothing from the agent's stream within {timeout:g} s",
                    reached=True,
                ) from None
        data = self.chunks.popleft()
        self.size -= len(data)
        if self.paused and self.size < STREAM_LOW:
            self._resume()
        return data


class H1Stream:
    """An answer read as it comes (`H1Pool.stream`): `status` and `headers` are known,
    `chunks()` gives its body (decoded if the agent compressed it). `close()` when done:
    a connection whose answer was not read to its end is closed, else it is kept."""

    def __init__(
        self, conn: _Conn, sink: Sink, status: int, headers: dict[str, str], timeout: float
    ) -> None:
        self._conn, self._sink, self._timeout = conn, sink, timeout
        self.status, self.headers = status, headers

    async def chunks(self) -> AsyncIterator[bytes]:
        inflate = Inflate.of(self.headers)
        while (data := await self._sink.next(self._timeout)) is not None:
            if inflate is not None:
                try:
                    data = inflate.feed(data)
                except zlib.error as e:
                    raise inflate.corrupt(e) from None
            if data:
                yield data
        if inflate is not None and inflate.fed and not inflate.eof:
            raise AgentUnreachable(f"the agent's {inflate.coding} body ended early", reached=True)

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    def close(self) -> None:
        self._conn.end_stream(self._sink)
