"""Building the fast lane (once per version of its sources, atomically, or not at all with
a warning), and `berth serve`'s choice: the public port to the lane and uvicorn on
`<data dir>/berth.sock`, or everything served as before."""

from __future__ import annotations

import logging
import socket
import stat
from pathlib import Path

import pytest

import berth.lane as lane_pkg
import berth.lane.build as build_mod
from berth.adapters.memory_bus import MemoryBus, MemoryCache, MemoryLocks
from berth.adapters.memory_store import MemoryStore
from berth.adapters.sql.sqlite import SqliteStore
from berth.bootstrap import Container, assemble
from berth.lane import build_lane, libpq_url
from berth.server import _fast_lane
from berth.settings import Settings
from tests.service.fakes import FakeAgents

LANE_C = '#include "canon.h"\nint main(void) { return ANSWER; }\n'


def sources(tmp_path: Path, c: str = LANE_C) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "lane.c").write_text(c)
    (src / "canon.h").write_text("#define ANSWER 0\n")
    return src


def test_the_lane_is_built_once_per_version_of_its_sources(tmp_path: Path) -> None:
    src, cache = sources(tmp_path), tmp_path / "cache"
    exe = build_lane(cache, src)
    assert exe is not None and exe.parent == cache and exe.name.startswith("berth-lane-")
    assert len(exe.name) == len("berth-lane-") + 12 and exe.stat().st_mode & stat.S_IXUSR
    built = exe.stat().st_mtime_ns
    assert build_lane(cache, src) == exe and exe.stat().st_mtime_ns == built  # cached
    (src / "canon.h").write_text("#define ANSWER 0\n/* changed */\n")
    again = build_lane(cache, src)
    assert again is not None and again != exe  # a new version of either source: a new build
    assert sorted(p.name for p in cache.iterdir()) == sorted([exe.name, again.name])  # no temp


def test_a_failed_build_says_why_and_leaves_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src, cache = sources(tmp_path, "int main(void) { return nope; }\n"), tmp_path / "cache"
    with caplog.at_level(logging.WARNING, logger="berth.lane"):
        assert build_lane(cache, src) is None
    assert "fast lane off" in caplog.text and "nope" in caplog.text  # the compiler's words
    assert list(cache.iterdir()) == []


def test_no_compiler_or_no_sources_is_no_lane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="berth.lane"):
        assert build_lane(tmp_path / "cache", tmp_path / "empty") is None
        monkeypatch.setattr("shutil.which", lambda name: None)
        assert build_lane(tmp_path / "cache", sources(tmp_path)) is None
    assert "cannot be read" in caplog.text and "no C compiler" in caplog.text


def test_fast_lane_is_auto_on_or_off_and_auto_by_default() -> None:
    with pytest.raises(ValueError, match="BERTH_FAST_LANE: auto, on or off"):
        Settings.from_env({"BERTH_FAST_LANE": "yes"})
    assert Settings.from_env({"BERTH_FAST_LANE": "on"}).fast_lane == "on"
    assert Settings.from_env({"BERTH_FAST_LANE": "off"}).fast_lane == "off"
    assert Settings().fast_lane == "auto"


def container(tmp_path: Path, store: object, **kw: object) -> Container:
    kw = {"fast_lane": "on", "port": 0, **kw}
    settings = Settings(data_dir=str(tmp_path / "data"), **kw)  # type: ignore[arg-type]
    return assemble(
        settings,
        store=store,  # type: ignore[arg-type]
        shared=(MemoryCache(), MemoryLocks(), MemoryBus()),
        client=FakeAgents(),
        provisioners={},
        admin="admin-token",
    )


def test_serve_hands_the_public_port_to_the_lane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = tmp_path / "berth-lane-x"
    monkeypatch.setattr(lane_pkg, "build_lane", lambda cache, **kw: exe)
    (tmp_path / "data").mkdir()
    stale = tmp_path / "data" / "berth.sock"
    stale.write_text("left by a killed berth")
    c = container(tmp_path, SqliteStore(str(tmp_path / "data" / "berth.db")))
    unix = _fast_lane(c.settings, c)
    assert unix is not None and c.lane is not None
    upstream, handoff = unix
    try:
        assert upstream.family == socket.AF_UNIX and upstream.getsockname() == str(stale)
        assert stat.S_IMODE(stale.stat().st_mode) == 0o600
        # hand-offs come over a socket of their own, which the lane relays nothing to
        assert handoff.getsockname() == str(tmp_path / "data" / "berth-lane.sock")
        assert c.lane.env["BERTH_LANE_HANDOFF"] == handoff.getsockname()
        (public,) = c.lane.process._listen
        assert public.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1  # listening
        env = c.lane.env
        assert env["BERTH_LANE_UPSTREAM"] == str(stale)
        assert env["BERTH_LANE_DB"] == str((tmp_path / "data" / "berth.db").resolve())
        assert env["BERTH_LANE_OWNER"] == f"{c.settings.replica}:lane"
        assert len(env["BERTH_LANE_SECRET"]) == 32 and "admin-token" not in env.values()
        assert env["BERTH_LANE_WAIT"] == "300.0" and env["BERTH_LANE_SYNCHRONOUS"] == "FULL"
        assert env["BERTH_LANE_IN_DOCKER"] == ("1" if c.in_docker else "0")
    finally:
        upstream.close()
        handoff.close()
        for s in c.lane.process._listen:
            s.close()


def test_serve_without_sqlite_or_without_a_build_runs_without_the_lane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    c = container(tmp_path, MemoryStore())
    with caplog.at_level(logging.WARNING):
        assert _fast_lane(c.settings, c) is None
    assert "needs a SQLite or PostgreSQL store" in caplog.text and c.lane is None
    monkeypatch.setattr(lane_pkg, "build_lane", lambda cache, **kw: None)
    (tmp_path / "data").mkdir()
    c = container(tmp_path, SqliteStore(str(tmp_path / "data" / "berth.db")))
    assert _fast_lane(c.settings, c) is None and c.lane is None
    off = Settings(data_dir=str(tmp_path / "data"), fast_lane="off")
    assert _fast_lane(off, c) is None


def test_by_default_the_lane_serves_sqlite_and_stays_quiet_on_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """BERTH_FAST_LANE=auto (the default): the lane where it can serve (SQLite, built);
    a store it cannot serve (PostgreSQL replicas) is no reason for a warning."""
    c = container(tmp_path, MemoryStore(), fast_lane="auto")
    with caplog.at_level(logging.INFO):
        assert _fast_lane(c.settings, c) is None and c.lane is None
    assert "needs a SQLite or PostgreSQL store" not in caplog.text
    monkeypatch.setattr(lane_pkg, "build_lane", lambda cache, **kw: tmp_path / "berth-lane-x")
    (tmp_path / "data").mkdir()
    c = container(tmp_path, SqliteStore(str(tmp_path / "data" / "berth.db")), fast_lane="auto")
    unix = _fast_lane(c.settings, c)
    assert unix is not None and c.lane is not None
    for s in [*unix, *c.lane.process._listen]:
        s.close()


def test_on_postgresql_the_lane_is_asked_for_and_told_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto: Python serves a PostgreSQL berth; on: the lane built against libpq, told
    berth's database as libpq reads it (and no SQLite file)."""
    from berth.adapters.sql.postgres import PostgresStore

    built: list[bool] = []

    def build(cache: Path, **kw: bool) -> Path:
        built.append(kw.get("postgres", False))
        return tmp_path / "berth-lane-x"

    monkeypatch.setattr(lane_pkg, "build_lane", build)
    (tmp_path / "data").mkdir()
    url = "postgresql://u@127.0.0.1:5432/db?search_path=s"
    c = container(tmp_path, PostgresStore(url), fast_lane="auto")
    assert _fast_lane(c.settings, c) is None and c.lane is None and built == []
    c = container(tmp_path, PostgresStore(url), fast_lane="on")
    unix = _fast_lane(c.settings, c)
    assert unix is not None and c.lane is not None and built == [True]
    env = c.lane.env
    assert env["BERTH_LANE_PG"] == "postgresql://u@127.0.0.1:5432/db?options=-c%20search_path%3Ds"
    assert "BERTH_LANE_DB" not in env
    for s in [*unix, *c.lane.process._listen]:
        s.close()


def test_the_lane_for_postgresql_is_built_against_libpq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A build of its own (`berth-lane-pg-…`, LANE_PG defined, linked with libpq); none,
    with the reason, where libpq's headers are missing."""
    c = '#include "canon.h"\n#include <libpq-fe.h>\nint main(void) { return LANE_PG - 1; }\n'
    src, cache = sources(tmp_path, c), tmp_path / "cache"
    exe = build_lane(cache, src, postgres=True)
    assert exe is not None and exe.name.startswith("berth-lane-pg-")
    assert build_lane(cache, src) is None  # without LANE_PG it does not compile
    monkeypatch.setattr(build_mod, "_libpq_include", lambda: None)
    with caplog.at_level(logging.WARNING, logger="berth.lane"):
        assert build_lane(tmp_path / "other", src, postgres=True) is None
    assert "no libpq headers" in caplog.text


def test_berth_s_postgresql_url_is_given_to_libpq_as_libpq_reads_it() -> None:
    assert libpq_url("postgresql://u:p@h:5433/db") == "postgresql://u:p@h:5433/db"
    # asyncpg sends unknown parameters as server settings; libpq takes them in `options`
    assert (
        libpq_url("postgresql://h/db?search_path=t_1&sslmode=require&x=a b")
        == "postgresql://h/db?sslmode=require&options=-c%20search_path%3Dt_1%20-c%20x%3Da%5C%20b"
    )
    assert libpq_url("postgres://h/db?ssl=true") == "postgres://h/db?sslmode=require"
    assert libpq_url("postgres://h/db?ssl=false") == "postgres://h/db?sslmode=disable"
    assert libpq_url("postgres://h/db?ssl=verify-full") == "postgres://h/db?sslmode=verify-full"
    # asyncpg's `database` is libpq's `dbname` (not a server setting)
    assert libpq_url("postgresql://h:5432/?database=b_1") == "postgresql://h:5432/?dbname=b_1"
    # as asyncpg reads it: the address and the path before the query
    assert libpq_url("postgresql://h:5432/test?port=5433") == "postgresql://h:5432/test"
    assert libpq_url("postgresql://u@h/test?database=x&user=v") == "postgresql://u@h/test"
    assert libpq_url("postgresql://h/test?user=v") == "postgresql://h/test?user=v"


def test_a_cached_lane_anyone_else_may_write_is_built_again(tmp_path: Path) -> None:
    """The build cache is shared by this user's berths: an executable others could have
    replaced is never run."""
    src, cache = sources(tmp_path), tmp_path / "cache"
    exe = build_lane(cache, src)
    assert exe is not None and stat.S_IMODE(cache.stat().st_mode) == 0o700
    built = exe.stat().st_mtime_ns
    exe.chmod(0o777)  # writable by anyone: not trusted
    again = build_lane(cache, src)
    assert again == exe and exe.stat().st_mtime_ns != built
    assert stat.S_IMODE(exe.stat().st_mode) & 0o022 == 0


def test_the_cache_is_the_users(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from berth.lane.build import cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "berth" / "lane"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "berth" / "lane"


def test_where_the_lanes_sockets_cannot_be_set_up_berth_serves_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by review once the lane was on by default: berth's port already taken, or a
    data dir whose socket path cannot be bound, ended berth's start in a traceback. Now
    the lane is off and berth goes on as without it: the same port fails as uvicorn always
    failed it (one line, exit 3), and a socket it cannot bind costs only the lane."""
    monkeypatch.setattr(lane_pkg, "build_lane", lambda cache, **kw: tmp_path / "berth-lane-x")
    (tmp_path / "data").mkdir()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        port = busy.getsockname()[1]
        store = SqliteStore(str(tmp_path / "data" / "berth.db"))
        c = container(tmp_path, store, fast_lane="auto", port=port)
        with caplog.at_level(logging.INFO):
            assert _fast_lane(c.settings, c) is None and c.lane is None
        assert "its sockets could not be set up" in caplog.text
    finally:
        busy.close()
    (tmp_path / "data" / "berth.sock").mkdir()  # not a socket a berth left behind
    c = container(tmp_path, SqliteStore(str(tmp_path / "data" / "berth.db")), fast_lane="auto")
    assert _fast_lane(c.settings, c) is None and c.lane is None
    # and its public socket was closed again: berth (uvicorn) can bind the port itself
    again = socket.socket()
    again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    again.bind((c.settings.host, c.settings.port or 0))
    again.close()


def test_under_auto_a_machine_without_a_compiler_is_news_not_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """berth's Docker image has no compiler: under the default it says so at INFO."""
    monkeypatch.setattr("shutil.which", lambda name: None)
    with caplog.at_level(logging.INFO, logger="berth.lane"):
        assert build_lane(tmp_path / "cache", sources(tmp_path), quiet=True) is None
    (record,) = [r for r in caplog.records if "no C compiler" in r.message]
    assert record.levelno == logging.INFO


def test_a_data_dir_too_deep_for_a_unix_socket_keeps_its_lane(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Unix socket's path holds about 100 bytes. With the lane on by default, a deep data
    dir would have cost berth its lane (found when the suite's chaos run, in pytest's long
    worker dirs, ran without it): the two sockets then go to a private directory of their
    own in the system's temporary dir."""
    monkeypatch.setattr(lane_pkg, "build_lane", lambda cache, **kw: tmp_path / "berth-lane-x")
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    settings = Settings(data_dir=str(deep), port=0, fast_lane="auto")
    c = assemble(
        settings,
        store=SqliteStore(str(deep / "berth.db")),
        shared=(MemoryCache(), MemoryLocks(), MemoryBus()),
        client=FakeAgents(),
        provisioners={},
        admin="admin-token",
    )
    unix = _fast_lane(c.settings, c)
    assert unix is not None and c.lane is not None
    try:
        upstream, handoff = (Path(s.getsockname()) for s in unix)
        assert upstream.parent == handoff.parent and upstream.parent.name.startswith("berth-lane-")
        assert stat.S_IMODE(upstream.parent.stat().st_mode) == 0o700
        assert c.lane.handoff_path == handoff and c.lane.env["BERTH_LANE_UPSTREAM"] == str(upstream)
    finally:
        for s in [*unix, *c.lane.process._listen]:
            s.close()
