"""Building the lane: `lane.c` (with `canon.h` beside it) compiled once per version of
its sources into a cache directory."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger("berth.lane")
__all__ = ["SOURCES", "build_lane", "cache_dir"]

HERE = Path(__file__).resolve().parent
SOURCES = ("lane.c", "canon.h")
LIBS = ("-lsqlite3", "-lpthread", "-lcrypto")
COMPILE_TIMEOUT = 300.0
STDERR_TAIL = 2000  # characters of the compiler's complaint that are logged


def cache_dir() -> Path:
    """Where built lanes are kept: one build per version of the sources for every berth of
    this user (`$XDG_CACHE_HOME/berth/lane`, else `~/.cache/berth/lane`), not one per data
    dir: a build takes about half a second."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "berth" / "lane"


def _trusted(exe: Path) -> bool:
    """A cached executable is run only if this user owns it and nobody else may write it
    (or its directory): the cache must not be a way into berth's process."""
    try:
        for p in (exe, exe.parent):
            st = p.stat()
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                return False
    except OSError:
        return False
    return os.access(exe, os.X_OK)


def _libpq_include() -> str | None:
    """The directory holding libpq-fe.h (pg_config's, else Debian's), or None."""
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            done = subprocess.run(
                [pg_config, "--includedir"], capture_output=True, text=True, timeout=30
            )
            d = done.stdout.strip()
            if done.returncode == 0 and (Path(d) / "libpq-fe.h").is_file():
                return d
        except (OSError, subprocess.TimeoutExpired):
            pass
    for d in ("/usr/include/postgresql", "/usr/include"):
        if (Path(d) / "libpq-fe.h").is_file():
            return d
    return None


def build_lane(
    cache_dir: Path, source_dir: Path = HERE, *, quiet: bool = False, postgres: bool = False
) -> Path | None:
    """The lane's executable, compiled unless this version of its sources already was
    (`<cache_dir>/berth-lane-<12 hex of their sha256>`, `berth-lane-pg-…` with PostgreSQL);
    None, with a warning saying why, when it cannot be built (berth then serves everything
    itself). `quiet`: the reason is logged at INFO instead (BERTH_FAST_LANE=auto: a machine
    without a compiler, such as berth's Docker image, is no fault). `postgres`: built
    against libpq too, for a berth whose store is PostgreSQL (it needs libpq's headers)."""
    level = logging.INFO if quiet else logging.WARNING
    try:
        digest = hashlib.sha256()
        for name in SOURCES:
            digest.update(name.encode() + b"\0" + (source_dir / name).read_bytes() + b"\0")
    except OSError as e:
        log.log(level, "fast lane off: its sources cannot be read (%s)", e)
        return None
    exe = cache_dir / f"berth-lane-{'pg-' if postgres else ''}{digest.hexdigest()[:12]}"
    if exe.is_file() and _trusted(exe):
        return exe
    gcc = shutil.which("gcc")
    if gcc is None:
        log.log(level, "fast lane off: no C compiler (gcc) to build it with")
        return None
    flags: list[str] = []
    libs = list(LIBS)
    if postgres:
        include = _libpq_include()
        if include is None:
            log.log(level, "fast lane off: no libpq headers (libpq-fe.h) to build it with")
            return None
        flags, libs = ["-DLANE_PG", f"-I{include}"], [*libs, "-lpq"]
    try:
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cache_dir.chmod(0o700)
    except OSError as e:
        log.log(level, "fast lane off: cannot make its build directory %s (%s)", cache_dir, e)
        return None
    tmp = exe.with_name(f"{exe.name}.tmp-{os.getpid()}")
    cmd = [gcc, "-O2", *flags, "-o", str(tmp), str(source_dir / "lane.c"), *libs]
    try:
        done = subprocess.run(
            cmd, cwd=source_dir, capture_output=True, text=True, timeout=COMPILE_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        tmp.unlink(missing_ok=True)
        log.log(level, "fast lane off: building it failed: %s", e)
        return None
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        log.log(
            level,
            "fast lane off: building it failed (gcc exit %d): %s",
            done.returncode,
            done.stderr.strip()[-STDERR_TAIL:],
        )
        return None
    os.replace(tmp, exe)  # atomic: a concurrent build or a reader sees a whole file or none
    log.info("fast lane built: %s", exe)
    return exe
