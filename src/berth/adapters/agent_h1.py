"""A lean HTTP/1.1 client for berth's plain requests to agents (a send's forward, card
reads, the HTTP+JSON binding's GET/DELETE) over plain `http://`.

Why not aiohttp here: the forward of every message went through aiohttp's client, about a
quarter of berth's event-loop CPU per message at c=16 (py-spy, docs/benchmarks.md): a
request object, payload objects, a timeout handle with its own task wrapper, a
multi-dict of headers, a connector lookup and a response object, all for a few hundred
bytes both ways. This client writes the request in one `write`, parses the answer with
httptools (the C parser uvicorn uses) in an asyncio Protocol, and keeps connections
alive in a pool per (host, port): one future and one timer per request.

Scope, on purpose: `http://` only, a body known up front, no HEAD (the answer's framing
depends on it). An answer is read whole (`request`) or as it comes (`stream`: a stream's
head first, then its body chunk by chunk). `https://`, HEAD and anything with a header
berth would not write itself go through aiohttp (`agent_http.HttpAgentClient` decides),
so behaviour there is unchanged. Failures mean what aiohttp's meant to the dispatcher: nothing sent (no
connection) is `reached=False`; anything after the request was written (a reset, a
timeout, a malformed answer) is `reached=True`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

from berth.ports import AgentReply, AgentUnreachable

__all__ = ["H1Pool", "H1Stream", "h1_target"]

_BAD = frozenset("\r\n\0")


@functools.lru_cache(maxsize=4096)
def h1_target(url: str) -> tuple[str, int, bytes, bytes] | None:
    """(host, port, request target, Host header) of a plain-HTTP URL, or None when this
    client does not serve it (another scheme, credentials in the URL, odd characters)."""
    try:
        u = urlsplit(url)
        port = 80 if u.port is None else u.port
    except ValueError:
        return None
    if u.scheme != "http" or not u.hostname or u.username or u.password:
        return None
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    if not target.isascii() or any(ch in _BAD or ch == " " for ch in target):
        return None
    host = u.hostname
    shown = f"[{host}]" if ":" in host else host
    return host, port, target.encode(), (shown if port == 80 else f"{shown}:{port}").encode()


def _bad(text: str) -> bool:
    """A character of _BAD in `text` (substring tests: a generator over the characters of
    every header cost ~15 us per forward)."""
    return "\r" in text or "\n" in text or "\0" in text


def _encode_headers(headers: dict[str, str]) -> bytes | None:
    """The header lines, or None when one holds a character HTTP forbids there (aiohttp
    then answers for it, as before this client existed)."""
    out = []
    for k, v in headers.items():
        lk = k.lower()
        if lk in ("host", "content-length", "transfer-encoding", "connection"):
            continue  # this client's own
        if _bad(k) or _bad(v) or ":" in k:
            return None
        out.append(f"{k}: {v}\r\n")
    try:
        return "".join(out).encode("latin-1")
    except UnicodeEncodeError:
        return None


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pool: H1Pool, key: tuple[str, int]) -> None:
        self._pool, self.key = pool, key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._fut: asyncio.Future[AgentReply] | None = None
        self._sink: _Sink | None = None  # a stream's reader, instead of _fut
        self._parser: httptools.HttpResponseParser | None = None
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._keep = True
        self._stray = False  # bytes of an answer nobody asked for: not reusable
        self.idle_since = 0.0  # when it went back to the pool (monotonic)

    # asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # bytes nobody asked for: the connection is not reusable
            self._close()
            return
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            why = f"malformed HTTP answer from the agent: {type(e).__name__}: {e}"
            self._fail(AgentUnreachable(why, reached=True))
            self._close()
            return
        if self._stray:  # more than the one answer in these bytes
            self._close()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pool._forget(self)
        sink = self._sink
        if sink is not None:
            self._sink = self._parser = None
            if exc is None and self._status and not self._chunked_or_sized():
                sink.end()  # a stream delimited by the end of the connection
            else:
                why = f": {exc}" if exc else ""
                sink.fail(
                    AgentUnreachable(
                        f"ServerDisconnectedError: the agent closed the connection{why}",
                        reached=True,
                    )
                )
            return
        fut = self._fut
        if fut is None or fut.done():
            return
        if exc is None and self._status and not self._chunked_or_sized():
            self._finish()  # a body delimited by the end of the connection (not by a reset)
            return
        why = f": {exc}" if exc else ""
        self._fail(
            AgentUnreachable(
                f"ServerDisconnectedError: the agent closed the connection{why}", reached=True
            )
        )

    # httptools callbacks ------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._fut is None and self._sink is None:  # a second answer after the one asked for
            self._stray = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._fut is None and self._sink is None:
            return
        k = name.decode("latin-1").lower()
        v = value.decode("latin-1")
        self._headers[k] = f"{self._headers[k]}, {v}" if k in self._headers else v

    def on_headers_complete(self) -> None:
        if (self._fut is None and self._sink is None) or self._parser is None:
            return
        self._status = self._parser.get_status_code()
        self._keep = self._parser.should_keep_alive()
        if self._sink is not None and not 100 <= self._status < 200:
            self._sink.begin(self._status, self._headers)

    def on_body(self, body: bytes) -> None:
        if self._sink is not None:
            self._sink.chunk(body)
        elif self._fut is not None:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._fut is None and self._sink is None:
            return
        if 100 <= self._status < 200:  # an interim answer: the real one follows
            self._reset_answer()
            return
        if self._sink is not None:
            sink, self._sink, self._parser = self._sink, None, None
            self._headers = {}
            sink.end()
            if self._keep and not self.closed:
                self._pool._release(self)
            else:
                self._close()
            return
        self._finish()

    # the request --------------------------------------------------------------
    def send(self, head: bytes, body: bytes | None, fut: asyncio.Future[AgentReply]) -> None:
        self._fut = fut
        self._parser = httptools.HttpResponseParser(self)
        self._reset_answer()
        assert self.transport is not None
        self.transport.write(head + body if body else head)

    def send_stream(self, head: bytes, body: bytes | None, sink: _Sink) -> None:
        self._sink = sink
        self._parser = httptools.HttpResponseParser(self)
        self._reset_answer()
        assert self.transport is not None
        self.transport.write(head + body if body else head)

    def end_stream(self, sink: _Sink) -> None:
        """The reader is done with `sink`: a stream not read to its end leaves the
        connection unusable (the rest of the answer would come first)."""
        if self._sink is sink:
            self._sink = self._parser = None
            self._close()

    def time_out(self, fut: asyncio.Future[AgentReply], timeout: float) -> None:
        why = AgentUnreachable(f"TimeoutError: no answer within {timeout:g} s", reached=True)
        self.abort(fut, why)

    def abort(self, fut: asyncio.Future[AgentReply], why: AgentUnreachable) -> None:
        """End the request of `fut` and the connection, if the connection still carries
        it (once answered, it may already carry another caller's request)."""
        if self._fut is fut:
            self._fail(why)
            self._close()

    def _reset_answer(self) -> None:
        self._status, self._headers, self._body = 0, {}, []  # status 0: no headers yet

    def _chunked_or_sized(self) -> bool:
        return "content-length" in self._headers or "chunked" in self._headers.get(
            "transfer-encoding", ""
        )

    def _finish(self) -> None:
        fut, self._fut, self._parser = self._fut, None, None
        if fut is None or fut.done():
            self._close()
            return
        body = b"".join(self._body)
        headers, self._headers, self._body = self._headers, {}, []
        coding = headers.get("content-encoding", "").strip().lower()
        if coding in ("gzip", "deflate", "x-gzip") and body:
            try:
                body = zlib.decompress(body, 47 if coding != "deflate" else 15)
            except zlib.error:
                try:
                    body = zlib.decompress(body, -15)  # raw deflate, as some servers send it
                except zlib.error as e:
                    fut.set_exception(
                        AgentUnreachable(f"the agent's {coding} body is corrupt: {e}", reached=True)
                    )
                    self._close()
                    return
        fut.set_result(
            AgentReply(self._status, body, headers.get("content-type", "application/json"), headers)
        )
        if self._keep and not self.closed:
            self._pool._release(self)
        else:
            self._close()

    def _fail(self, e: AgentUnreachable) -> None:
        fut, self._fut, self._parser = self._fut, None, None
        if fut is not None and not fut.done():
            fut.set_exception(e)
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.fail(e)

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self._pool._forget(self)
            if self.transport is not None:
                self.transport.close()


STREAM_HIGH = 256 * 1024  # a stream's bytes buffered before its connection stops reading
STREAM_LOW = 64 * 1024  # and below which it reads again
STREAM_CONNECT_SECONDS = 10.0  # a stream's connect, as aiohttp's sock_connect was


class _Sink:
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
        self, conn: _Conn, sink: _Sink, status: int, headers: dict[str, str], timeout: float
    ) -> None:
        self._conn, self._sink, self._timeout = conn, sink, timeout
        self.status, self.headers = status, headers

    async def chunks(self) -> AsyncIterator[bytes]:
        coding = self.headers.get("content-encoding", "").strip().lower()
        packed = coding in ("gzip", "deflate", "x-gzip")
        inflate = zlib.decompressobj(47 if coding != "deflate" else 15) if packed else None
        first = True
        while (data := await self._sink.next(self._timeout)) is not None:
            if inflate is not None:
                try:
                    try:
                        data = inflate.decompress(data)
                    except zlib.error:
                        if not (first and coding == "deflate"):
                            raise
                        inflate = zlib.decompressobj(-15)  # raw deflate, as some servers send
                        data = inflate.decompress(data)
                except zlib.error as e:
                    raise AgentUnreachable(
                        f"the agent's {coding} body is corrupt: {e}", reached=True
                    ) from None
            first = False
            if data:
                yield data
        if inflate is not None and not first and not inflate.eof:
            raise AgentUnreachable(f"the agent's {coding} body ended early", reached=True)

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    def close(self) -> None:
        self._conn.end_stream(self._sink)


# A kept-alive connection idle longer than this is closed rather than reused: servers close
# idle connections on their own clock (uvicorn and Node after 5 s), and a request written
# just as the server's close is in flight fails as a transport failure (an attempt).
IDLE_REUSE_SECONDS = 4.0


class H1Pool:
    """Keep-alive connections per (host, port), at most `limit` open at once in all."""

    def __init__(
        self, *, limit: int = 256, idle_per_host: int = 64, idle_reuse: float = IDLE_REUSE_SECONDS
    ) -> None:
        self._limit = limit
        self._idle_per_host = idle_per_host
        self._idle_reuse = idle_reuse
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._open: set[_Conn] = set()
        self._waiting: list[asyncio.Future[None]] = []
        self.connections_made = 0  # for tests and benchmarks: reuse shows as a small number

    async def request(
        self,
        method: str,
        target: tuple[str, int, bytes, bytes],
        body: bytes | None,
        headers: dict[str, str],
        timeout: float,
    ) -> AgentReply | None:
        """The agent's whole answer; None when these headers are for aiohttp to write."""
        head = self._head(method, target, body, headers)
        if head is None:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = await self._acquire(loop, (target[0], target[1]), deadline)
        fut: asyncio.Future[AgentReply] = loop.create_future()
        timer = loop.call_at(deadline, conn.time_out, fut, timeout)
        try:
            conn.send(head, body, fut)
            return await fut
        except asyncio.CancelledError:
            conn.abort(fut, AgentUnreachable("the request was cancelled", reached=True))
            raise
        finally:
            timer.cancel()

    async def stream(
        self,
        method: str,
        target: tuple[str, int, bytes, bytes],
        body: bytes | None,
        headers: dict[str, str],
        timeout: float,
    ) -> H1Stream | None:
        """The agent's answer once its head is in, its body to be read as it comes
        (`timeout` bounds the wait for the head and for each chunk, as aiohttp's sock_read
        did, and the connect at most 10 s, as its sock_connect did); None when these
        headers are for aiohttp to write."""
        head = self._head(method, target, body, headers)
        if head is None:
            return None
        loop = asyncio.get_running_loop()
        connect = min(timeout, STREAM_CONNECT_SECONDS)
        conn = await self._acquire(loop, (target[0], target[1]), loop.time() + connect)
        assert conn.transport is not None
        sink = _Sink(loop, conn.transport)
        conn.send_stream(head, body, sink)
        try:
            async with asyncio.timeout(timeout):
                status, got = await sink.head
        except TimeoutError:
            conn.end_stream(sink)
            raise AgentUnreachable(
                f"TimeoutError: no answer within {timeout:g} s", reached=True
            ) from None
        except BaseException:
            conn.end_stream(sink)
            raise
        return H1Stream(conn, sink, status, got, timeout)

    @staticmethod
    def _head(
        method: str,
        target: tuple[str, int, bytes, bytes],
        body: bytes | None,
        headers: dict[str, str],
    ) -> bytes | None:
        if method == "HEAD":
            return None
        lines = _encode_headers(headers)
        if lines is None:
            return None
        _, _, path, host_header = target
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s" % (method.encode(), path, host_header, lines)
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head += b"Content-Length: %d\r\n" % len(body or b"")
        return head + b"\r\n"

    async def _acquire(
        self, loop: asyncio.AbstractEventLoop, key: tuple[str, int], deadline: float
    ) -> _Conn:
        conn = self._pop_idle(key)
        if conn is not None:
            return conn
        while len(self._open) >= self._limit and not self._evict_idle():
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiting.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as e:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, but leaving: the room goes to the next one
                if isinstance(e, TimeoutError):
                    raise AgentUnreachable(
                        "TimeoutError: no free connection to the agent in time", reached=False
                    ) from None
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiter)
            conn = self._pop_idle(key)
            if conn is not None:
                return conn
        conn = _Conn(self, key)
        self._open.add(conn)
        try:
            async with asyncio.timeout_at(deadline):
                await loop.create_connection(lambda: conn, key[0], key[1])
        except (OSError, TimeoutError) as e:
            self._forget(conn)
            raise AgentUnreachable(
                f"ClientConnectorError: cannot connect to {key[0]}:{key[1]}: {e or type(e).__name__}",
                reached=False,
            ) from e
        except BaseException:
            self._forget(conn)
            raise
        self.connections_made += 1
        return conn

    def _pop_idle(self, key: tuple[str, int]) -> _Conn | None:
        """A kept-alive connection to `key` that is still open, if there is one."""
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest = time.monotonic() - self._idle_reuse
        while idle:
            conn = idle.pop()  # the most recently used first
            if conn.idle_since < oldest:
                conn._close()  # and every other one: they are older still
                for stale in list(idle):
                    stale._close()
                return None
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def _evict_idle(self) -> bool:
        """Close an idle connection (of any host) to make room under the limit."""
        for idle in self._idle.values():
            if idle:
                idle.pop(0)._close()
                return True
        return False

    def _release(self, conn: _Conn) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self._idle_per_host:
            conn._close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)
        self._wake_one()

    def _forget(self, conn: _Conn) -> None:
        if conn in self._open:
            self._open.discard(conn)
            idle = self._idle.get(conn.key)
            if idle and conn in idle:
                idle.remove(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiting:
            w = self._waiting.pop(0)
            if not w.done():
                w.set_result(None)
                return

    async def close(self) -> None:
        for conn in list(self._open):
            conn._close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports' close callbacks run
