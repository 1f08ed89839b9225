"""Find the external services a test needs, or say clearly why it cannot run.

A missing service skips the test on a developer's machine but fails it in CI (`CI=true`),
so a broken CI setup can never pass by silently skipping every backend test.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

__all__ = ["POSTGRES_URL_ENV", "REDIS_URL_ENV", "Outage", "require_postgres", "require_redis"]

POSTGRES_URL_ENV = "BERTH_TEST_POSTGRES_URL"
REDIS_URL_ENV = "BERTH_TEST_REDIS_URL"
_POSTGRES_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
_REDIS_DEFAULT = "redis://127.0.0.1:6379/15"
_TIMEOUT = 2.0


def _unavailable(reason: str) -> None:
    """Fail in CI, skip elsewhere; never returns."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(reason)


def _run(factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a probe coroutine whether or not an event loop is already running here.

    Async fixtures call these helpers from inside pytest-asyncio's loop, where
    `asyncio.run` is not allowed, so the probe then runs on a private thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(factory())
        return
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(factory())
        except BaseException as e:  # handed back to the caller's thread
            errors.append(e)

    t = threading.Thread(target=target, name="berth-service-probe")
    t.start()
    t.join()
    if errors:
        raise errors[0]


def require_postgres() -> str:
    """The PostgreSQL URL for tests, after checking that the server answers."""
    url = os.environ.get(POSTGRES_URL_ENV, _POSTGRES_DEFAULT)
    try:
        import asyncpg
    except ImportError:
        _unavailable("PostgreSQL tests need asyncpg: pip install -e '.[dev]'")

    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=_TIMEOUT)
        try:
            await conn.fetchval("SELECT 1", timeout=_TIMEOUT)
        finally:
            await conn.close(timeout=_TIMEOUT)

    try:
        _run(probe)
    except Exception as e:  # any failure means "not usable here"
        _unavailable(
            f"PostgreSQL at {url} does not answer ({type(e).__name__}: {e}); "
            f"set {POSTGRES_URL_ENV} or start it with scripts/services start"
        )
    return url


def require_redis() -> str:
    """The Redis URL for tests, after checking that the server answers a PING."""
    url = os.environ.get(REDIS_URL_ENV, _REDIS_DEFAULT)
    try:
        import redis.asyncio as aioredis
    except ImportError:
        _unavailable("Redis tests need redis-py: pip install -e '.[dev]'")

    async def probe() -> None:
        client = aioredis.from_url(url, socket_timeout=_TIMEOUT, socket_connect_timeout=_TIMEOUT)
        try:
            await asyncio.wait_for(client.ping(), _TIMEOUT)
        finally:
            await client.aclose()

    try:
        _run(probe)
    except Exception as e:
        _unavailable(
            f"Redis at {url} does not answer ({type(e).__name__}: {e}); "
            f"set {REDIS_URL_ENV} or start it with scripts/services start"
        )
    return url


class Outage:
    """A TCP proxy in front of Redis that can go away and come back on the same port."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def down(self) -> None:
        """Refuse new connections and cut the open ones, as a restarting server would."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._pipes):
            w.transport.abort()
        self._pipes.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            r2, w2 = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._pipes |= {writer, w2}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, w2), pipe(r2, writer))
        self._pipes -= {writer, w2}
