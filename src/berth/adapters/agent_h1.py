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
head first, then its body chunk by chunk; the body side is `agent_h1_body`). `https://`,
HEAD and anything with a header berth would not write itself go through aiohttp
(`agent_http.HttpAgentClient` decides), so behaviour there is unchanged. Failures mean
what aiohttp's meant to the dispatcher: nothing sent (no connection) is `reached=False`;
anything after the request was written (a reset, a timeout, a malformed answer) is
`reached=True`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import zlib
from urllib.parse import urlsplit

import httptools

from berth.adapters.agent_h1_body import H1Stream, Inflate, Sink
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
        self._sink: Sink | None = None  # a stream's reader, instead of _fut
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
        if self._sink is None and (self._fut is None or self._fut.done()):
            return
        if exc is None and self._status and not self._chunked_or_sized():
            self._complete()  # a body delimited by the end of the connection (not by a reset)
            return
        why = f": {exc}" if exc else ""
        self._fail(
            AgentUnreachable(
                f"ServerDisconnectedError: the agent closed the connection{why}", reached=True
            )
        )

    # httptools callbacks ------------------------------------------------------
    @property
    def _asked(self) -> bool:
        """An answer is awaited, whole (`_fut`) or as it comes (`_sink`)."""
        return self._fut is not None or self._sink is not None

    def on_message_begin(self) -> None:
        if not self._asked:  # a second answer after the one asked for
            self._stray = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._asked:
            return
        k = name.decode("latin-1").lower()
        v = value.decode("latin-1")
        self._headers[k] = f"{self._headers[k]}, {v}" if k in self._headers else v

    def on_headers_complete(self) -> None:
        if not self._asked or self._parser is None:
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
        if not self._asked:
            return
        if 100 <= self._status < 200:  # an interim answer: the real one follows
            self._reset_answer()
            return
        self._complete()

    # the request --------------------------------------------------------------
    def send(self, head: bytes, body: bytes | None, fut: asyncio.Future[AgentReply]) -> None:
        self._fut = fut
        self._write(head, body)

    def send_stream(self, head: bytes, body: bytes | None, sink: Sink) -> None:
        self._sink = sink
        self._write(head, body)

    def _write(self, head: bytes, body: bytes | None) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._reset_answer()
        assert self.transport is not None
        self.transport.write(head + body if body else head)

    def end_stream(self, sink: Sink) -> None:
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

    def _complete(self) -> None:
        """The answer asked for is whole: to its stream's reader, or whole to its future."""
        sink = self._sink
        if sink is None:
            self._finish()
            return
        self._sink = self._parser = None
        self._headers = {}
        sink.end()
        self._keep_or_close()

    def _finish(self) -> None:
        fut, self._fut, self._parser = self._fut, None, None
        if fut is None or fut.done():
            self._close()
            return
        body = b"".join(self._body)
        headers, self._headers, self._body = self._headers, {}, []
        inflate = Inflate.of(headers)
        if inflate is not None and body:
            try:
                body = inflate.whole(body)
            except zlib.error as e:
                fut.set_exception(inflate.corrupt(e))
                self._close()
                return
        fut.set_result(
            AgentReply(self._status, body, headers.get("content-type", "application/json"), headers)
        )
        self._keep_or_close()

    def _keep_or_close(self) -> None:
        """After a whole answer: back to the pool if the agent keeps it alive."""
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


STREAM_CONNECT_SECONDS = 10.0  # a stream's connect, as aiohttp's sock_connect was

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
        sink = Sink(loop, conn.transport)
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
