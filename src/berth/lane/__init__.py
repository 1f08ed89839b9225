"""The fast lane's Python side (docs/fast-lane.md): the compiled front owns berth's public
port and serves plain sends itself; Python reads its feed, takes its hand-offs, and
supervises its process."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from berth.adapters.sql.sqlite import SqliteStore
from berth.lane.build import build_lane
from berth.lane.feed import LaneFeed
from berth.lane.handoff import Handed, LaneHandoff
from berth.lane.process import LaneProcess

if TYPE_CHECKING:
    from berth.bootstrap import Container

log = logging.getLogger("berth.lane")
__all__ = [
    "HANDOFF_FILE",
    "SOCKET_FILE",
    "Handed",
    "Lane",
    "LaneFeed",
    "LaneHandoff",
    "LaneProcess",
    "build_lane",
    "libpq_url",
]

SOCKET_FILE = "berth.sock"  # in the data dir: where uvicorn listens when the lane is on
HANDOFF_FILE = "berth-lane.sock"  # the lane's hand-offs alone (it relays nothing there)


class Lane:
    """One berth's fast lane: its process, its feed and its hand-offs (`Container.lane`).
    Started by the Container after recovery, stopped before the dispatcher closes."""

    def __init__(
        self,
        c: Container,
        exe: Path,
        listen: Sequence[socket.socket],
        upstream: Path,
        *,
        db: Path | str,
        handoff: Path | None = None,
    ) -> None:
        """`db`: the SQLite database file the lane writes to (berth's own), or the
        PostgreSQL URL of berth's store (a string), `upstream`: the
        Unix socket Python listens on, `listen`: the public sockets the lane serves."""
        s = c.settings
        self.owner = f"{c.dispatcher.owner}:lane"
        self.upstream = upstream
        self.handoff_path = handoff or upstream.with_name(HANDOFF_FILE)
        self._deliveries, self._dispatcher, self._metrics = c.deliveries, c.dispatcher, c.metrics
        self._store = c.store
        c.dispatcher.lane.owner = self.owner  # a drain reads the lane's forwards from the store
        secret = secrets.token_hex(16)
        self.feed = LaneFeed(c.deliveries, c.dispatcher, c.events, c.metrics, c.roster.name_of)
        self.handoff = LaneHandoff(
            c.deliveries,
            c.dispatcher,
            c.roster,
            c.proxy,
            c.metrics,
            owner=self.owner,
            secret=secret,
        )
        self.env = {  # what the lane is told (docs/fast-lane.md)
            "BERTH_LANE_UPSTREAM": str(upstream),
            "BERTH_LANE_HANDOFF": str(self.handoff_path),
            **(
                {"BERTH_LANE_DB": str(db)}
                if isinstance(db, Path)
                else {"BERTH_LANE_PG": libpq_url(db)}
            ),
            "BERTH_LANE_OWNER": self.owner,
            "BERTH_LANE_ADMIN_SHA256": hashlib.sha256(c.admin_token.encode()).hexdigest(),
            "BERTH_LANE_SECRET": secret,
            "BERTH_LANE_WAIT": repr(float(s.default_wait_seconds)),
            "BERTH_LANE_FORWARD_TIMEOUT": repr(float(s.forward_timeout)),
            "BERTH_LANE_LEASE": repr(float(s.lease_seconds)),
            "BERTH_LANE_MAX_BODY": str(s.max_body_bytes),
            "BERTH_LANE_GRACE": repr(float(s.shutdown_grace_seconds)),
            "BERTH_LANE_MAX_QUEUE": str(s.max_queue),
            "BERTH_LANE_SYNCHRONOUS": s.sqlite_synchronous.upper(),
            # berth in a container of its engine reaches Docker workspaces at rewritten
            # addresses (agent_link.rewrite_for_docker): those stay Python's
            "BERTH_LANE_IN_DOCKER": "1" if c.in_docker else "0",
        }
        self.process = LaneProcess(
            exe,
            listen,
            self.env,
            self.feed,
            self._gone,
            grace=s.shutdown_grace_seconds,
            prepare=self._where,
        )

    @staticmethod
    def database(c: Container) -> Path | str | None:
        """The SQLite file of the container's store, the URL of a PostgreSQL store (a
        string); None on any other store (the in-memory one)."""
        if isinstance(c.store, SqliteStore):
            return Path(c.store.path).resolve()
        url = getattr(c.store, "url", None)
        if isinstance(url, str) and url.startswith(("postgresql://", "postgres://")):
            return url
        return None

    async def start(self) -> None:
        await self.process.start()

    async def _where(self) -> dict[str, str]:
        """Before each start of a lane on PostgreSQL: the database and schema berth's own
        pool uses, which the lane writes to or not at all (a libpq default, a PG* variable
        or a URL read otherwise could lead it elsewhere). Read again at every start; when
        it cannot be read (the database away for berth too), the lane starts without the
        check rather than writing nothing until berth restarts."""
        if "BERTH_LANE_PG" not in self.env:
            return {}
        for attempt in range(3):
            try:
                at = await self._store.whereabouts()  # type: ignore[attr-defined]
                return {"BERTH_LANE_PG_EXPECT": at}
            except Exception as e:
                if attempt == 2:
                    log.warning("fast lane: cannot read berth's database name (%s): not checked", e)
                else:
                    await asyncio.sleep(1.0)
        return {}

    async def stop(self) -> None:
        await self.process.stop()

    async def _gone(self) -> None:
        """The lane exited (or was stopped): what it had in flight goes back to the queue
        at once, announced, and none of it counts as in flight any more."""
        self._metrics.set_value("berth_lane_up", 0.0)
        try:
            released = await self._deliveries.release_leases(self.owner)
            if released:
                log.info("fast lane: gave back %d in-flight deliveries", len(released))
        except Exception:  # the store is away: the lane's leases run out instead
            log.exception("fast lane: could not give its leases back; they will expire")
        self._dispatcher.lane.forget()


# what libpq reads from a URL's query; asyncpg passes any other parameter to the server as
# a setting, which libpq takes as `options=-c name=value`
_LIBPQ_PARAMS = {
    "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "connect_timeout",
    "client_encoding", "options", "application_name", "sslmode", "sslcert", "sslkey",
    "sslrootcert", "sslcrl", "sslpassword", "ssl_min_protocol_version",
    "ssl_max_protocol_version", "target_session_attrs", "krbsrvname", "gsslib", "service",
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
    "tcp_user_timeout", "requirepeer", "channel_binding", "gssencmode", "sslcompression",
}  # fmt: skip


_SSL_BOOL = {
    **dict.fromkeys(("true", "1", "on", "yes"), "require"),
    **dict.fromkeys(("false", "0", "off", "no"), "disable"),
}


def libpq_url(url: str) -> str:
    """berth's PostgreSQL URL (read by asyncpg) as libpq reads the same connection: the
    query parameters libpq knows stay, asyncpg's `ssl` is libpq's `sslmode`, and the
    server settings asyncpg would send (any other parameter, `search_path` say) go in
    `options`."""
    parts = urlsplit(url)
    keep: list[tuple[str, str]] = []
    settings: list[str] = []
    # asyncpg takes the address's host, port, user and password, and the path's database,
    # before the query's; libpq the other way round: the query's are dropped where the
    # address or the path gives them
    given = {
        "host": bool(parts.hostname),
        "hostaddr": bool(parts.hostname),
        "port": parts.port is not None,
        "user": bool(parts.username),
        "password": parts.password is not None,
        "dbname": bool(parts.path.strip("/")),
        "database": bool(parts.path.strip("/")),
    }
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        if given.get(k):
            continue
        if k in _LIBPQ_PARAMS:
            keep.append((k, v))
        elif k == "database":  # asyncpg's name of libpq's dbname
            keep.append(("dbname", v))
        elif k == "ssl":  # asyncpg's: a boolean or a mode
            keep.append(("sslmode", _SSL_BOOL.get(v.lower(), v)))
        else:  # a space or backslash in a value is escaped with a backslash in `options`
            value = v.replace("\\", "\\\\").replace(" ", "\\ ")
            settings.append(f"-c {k}={value}")
    if settings:
        keep = [(k, v) for k, v in keep if k != "options"] + [
            ("options", " ".join([*(v for k, v in keep if k == "options"), *settings]))
        ]
    query = urlencode(keep, quote_via=quote)
    return urlunsplit(parts._replace(query=query))
