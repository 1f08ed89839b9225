"""`berth serve`: run the app under uvicorn, optionally with the demo workspace."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import gc
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from berth.logs import configure
from berth.settings import Settings

if TYPE_CHECKING:
    from berth.bootstrap import Container

__all__ = ["DataDirInUse", "SERVE_OPTIONS", "lock_data_dir", "serve"]
log = logging.getLogger("berth")
LOCK_FILE = "berth.lock"
GIL_SWITCH_SECONDS = 0.0005  # see serve()
# Python's cyclic collector runs a young collection every 700 net allocations, and every
# tenth of those an older one, each walking what survived: with a message's futures,
# tasks and dicts that was ~16 % of berth's event-loop thread at c=16 (py-spy). berth
# freezes what exists once it is up (imports, the app: never garbage, never walked again)
# and collects the young generation every GC_YOUNG allocations instead.
GC_YOUNG = 20_000
LISTEN_BACKLOG = 1024  # the public sockets handed to the fast lane
UDS_MAX = 100  # bytes of a Unix socket's path (the kernel's limit is 107)
KEEP_ALIVE = 5  # seconds uvicorn keeps an idle caller's connection (its default)
# the Settings that `berth serve` takes as options (every one is also BERTH_<NAME>)
SERVE_OPTIONS = (
    "host",
    "port",
    "data_dir",
    "database_url",
    "redis_url",
    "admin_token",
    "public_url",
    "log_level",
    "log_format",
)


class DataDirInUse(Exception):
    pass


def serve(args: argparse.Namespace) -> None:
    settings = Settings.from_env(
        **{k: getattr(args, k, None) for k in SERVE_OPTIONS}, demo=True if args.demo else None
    )
    # before anything else: a second berth on this data dir must touch nothing of the first's
    lock = lock_data_dir(settings.data_path, settings.advertised_url)
    configure(settings.log_level, settings.log_format)
    import uvicorn

    from berth.api.app import create_app

    app = create_app(settings)
    # The store's threads (the SQLite committer's fsyncs) hand results back through the
    # GIL; a busy event loop keeps it up to the switch interval (5 ms by default), which
    # measured as several ms per message (docs/benchmarks.md).
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    tune_gc()
    where = (
        f"berth {settings.advertised_url} · data {settings.data_path} · "
        f"store {settings.store_url.split('@')[-1]}"
    )
    if settings.log_format == "json":
        log.info(where)
    else:
        print(where, file=sys.stderr)
    container = app.state.berth
    # the lane takes the public port: Python listens on these (relays, hand-offs)
    upstream = _fast_lane(settings, container)
    config = uvicorn.Config(
        app,
        log_config=None,  # uvicorn's own lines go through berth's handler (text or JSON)
        host=settings.host,
        port=settings.port,
        log_level="warning",
        loop="uvloop" if _has("uvloop") else "asyncio",
        http="httptools" if _has("httptools") else "h11",
        timeout_graceful_shutdown=60,
        # also the idle limit of the connections the lane pipes to Python: its callers'
        # (the lane reuses its own connections to Python for less: UPSTREAM_REUSE, lane.c)
        timeout_keep_alive=KEEP_ALIVE,
    )
    try:
        server = _server_class()(config)
        server.container = container
        server.run(sockets=upstream if upstream else _sockets(settings, container))
    finally:
        os.close(lock)


def _fast_lane(settings: Settings, container: Container) -> list[socket.socket] | None:
    """With the fast lane (BERTH_FAST_LANE auto, the default, or on) on SQLite, and built:
    the public sockets go to the lane (held
    open here, so a restart of the lane refuses nobody), and uvicorn serves the two Unix
    sockets returned, which only the lane connects to: `<data dir>/berth.sock` (what it
    relays) and `<data dir>/berth-lane.sock` (its hand-offs, and nothing a caller sent),
    or the same in a private temporary dir when the data dir is too deep for them.
    None: berth serves everything itself, as without the lane."""
    if settings.fast_lane == "off":
        return None
    from berth.lane import HANDOFF_FILE, SOCKET_FILE, Lane, build_lane
    from berth.lane.build import cache_dir

    db = Lane.database(container)
    if db is None or (isinstance(db, str) and settings.fast_lane != "on"):
        if db is None and settings.fast_lane == "on":
            log.warning("BERTH_FAST_LANE=on needs a SQLite or PostgreSQL store: serving without it")
        # auto on PostgreSQL: Python serves everything (the lane there is BERTH_FAST_LANE=on)
        return None
    # auto: a reason the lane cannot run here is news (INFO), not a fault (WARNING)
    quiet = settings.fast_lane != "on"
    level = logging.INFO if quiet else logging.WARNING
    exe = build_lane(cache_dir(), quiet=quiet, postgres=isinstance(db, str))
    if exe is None:
        return None
    path, handoff = settings.data_path / SOCKET_FILE, settings.data_path / HANDOFF_FILE
    if len(os.fsencode(handoff)) > UDS_MAX:
        # a data dir too deep for a Unix socket's path: the two sockets go to a directory of
        # their own in the system's temporary dir (a random name, 0700), removed at exit
        short = Path(tempfile.mkdtemp(prefix="berth-lane-"))
        atexit.register(shutil.rmtree, short, True)
        path, handoff = short / SOCKET_FILE, short / HANDOFF_FILE
    if len(os.fsencode(handoff)) > UDS_MAX:
        log.log(level, "fast lane off: the socket path %s is too long for a Unix socket", handoff)
        return None
    public: list[socket.socket] = []
    unix: list[socket.socket] = []
    try:
        public = _sockets(settings, container) or [_public_socket(settings)]
        for s in public:
            s.listen(LISTEN_BACKLOG)
        for where in (path, handoff):
            unix.append(s := socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            with contextlib.suppress(FileNotFoundError):
                where.unlink()  # a stale one, left by a berth that was killed
            s.bind(str(where))
            os.chmod(where, 0o600)
    except OSError as e:
        # berth's port taken, a data dir that holds no Unix socket...: serving without the
        # lane meets the same port as uvicorn would have, and fails as it always did
        for s in [*public, *unix]:
            s.close()
        log.log(level, "fast lane off: its sockets could not be set up (%s)", e)
        return None
    container.lane = Lane(container, exe, public, path, db=db, handoff=handoff)
    return unix


def _public_socket(settings: Settings) -> socket.socket:
    """berth's port as uvicorn would bind it, for the lane."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((settings.host, settings.port))
    except OSError:
        s.close()
        raise
    return s


def tune_gc() -> None:
    """See GC_YOUNG: freeze what exists (imports and the app, built before this is called)
    and collect the young generation less often; cycles are still collected, only in
    larger steps. Process-wide: only `berth serve` calls it, never the app (tests build
    many apps in one process)."""
    gc.collect()
    gc.freeze()
    _, mid, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG, mid, old)


def lock_data_dir(path: Path, url: str) -> int:
    """Hold `<data dir>/berth.lock` (flock) for this process's life; the kernel drops it when
    the process ends, kill -9 included. Raises DataDirInUse, touching nothing, if another
    berth holds it. The descriptor is not inherited by the agents berth starts."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode(errors="replace")
        os.close(fd)
        raise DataDirInUse(_in_use(path, holder)) from None
    os.ftruncate(fd, 0)
    info = {"pid": os.getpid(), "url": url, "since": time.time()}
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return fd


def _in_use(path: Path, holder: str) -> str:
    try:
        info = json.loads(holder)
        who = (
            f"pid {info['pid']}, serving {info['url']} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['since']))}"
        )
    except (ValueError, KeyError, TypeError):
        who = "pid unknown"
    return (
        f"another berth server is using the data dir {path} ({who}). "
        f"Stop it first, or give this one its own --data-dir (BERTH_DATA_DIR)."
    )


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


def _server_class() -> Any:
    import uvicorn

    class _Server(uvicorn.Server):
        """Exit 0 after a graceful shutdown on SIGTERM/SIGINT (uvicorn re-raises the signal).
        A fast lane is stopped first, while Python still serves its hand-offs."""

        container: Container | None = None

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            lane = None if self.container is None else self.container.lane
            if lane is not None:
                await lane.stop()
            await super().shutdown(sockets)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._captured_signals.clear()

    return _Server


def _has(mod: str) -> bool:
    try:
        __import__(mod)
        return True
    except ImportError:
        return False
