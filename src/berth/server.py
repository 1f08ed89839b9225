"""`berth serve`: run the app under uvicorn, optionally with the demo workspace."""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import sys
from collections.abc import Iterator

import uvicorn

from berth.api.app import create_app
from berth.bootstrap import Container
from berth.settings import Settings

__all__ = ["serve"]
log = logging.getLogger("berth")


def serve(args: argparse.Namespace) -> None:
    settings = Settings.from_env(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        database_url=args.database_url,
        redis_url=args.redis_url,
        admin_token=args.admin_token,
        public_url=args.public_url,
        demo=True if args.demo else None,
        log_level=args.log_level,
    )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    print(
        f"berth {settings.advertised_url} · data {settings.data_path} · store {settings.store_url.split('@')[-1]}",
        file=sys.stderr,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        loop="uvloop" if _has("uvloop") else "asyncio",
        http="httptools" if _has("httptools") else "h11",
        timeout_graceful_shutdown=60,
    )
    _Server(config).run(sockets=_sockets(settings, app.state.berth))


def _sockets(settings: Settings, container: Container) -> list[socket.socket] | None:
    """berth's listening sockets. Bound to the loopback (the default) with Docker workspaces
    on the same host, berth also listens on the host's address on the workspaces' network,
    so their agents can register without exposing berth on every interface."""
    docker = container.provisioners.get("docker")
    gateway = getattr(docker, "gateway", None)
    if (
        settings.host not in ("127.0.0.1", "localhost", "::1")
        or container.in_docker
        or gateway is None
    ):
        return None
    addresses = [settings.host]
    extra = gateway()
    if extra:
        addresses.append(extra)
    out = []
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, settings.port))
        except OSError as e:
            s.close()
            if address == settings.host:
                raise
            log.warning(
                "cannot also listen on %s:%s for docker workspaces: %s", address, settings.port, e
            )
            continue
        out.append(s)  # not inheritable: agents berth starts must not hold berth's port
        if address != settings.host:
            log.info("also listening on %s:%s, for docker workspaces", address, settings.port)
    return out


class _Server(uvicorn.Server):
    """Exit 0 after a graceful shutdown on SIGTERM/SIGINT (uvicorn re-raises the signal)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


def _has(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except ImportError:
        return False
