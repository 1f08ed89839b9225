"""Data at rest (issue 10): the data directory is 0700 and every file berth writes 0600;
process agents run with a minimal environment and, when berth runs as root, as a
dedicated unprivileged user that cannot read berth's database or admin token.

`secure_data_dir` runs once at start (`bootstrap.build`), before anything is written: it
sets berth's umask to 077, so whatever berth (and the agents it starts) create later is
private too, and tightens what an older berth left behind."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("berth.hardening")
__all__ = ["AgentUser", "agent_user", "minimal_env", "secure_data_dir"]

UMASK = 0o077
# what a process agent gets from berth's own environment; the rest is BERTH_* (its
# identity) and what the workspace spec names
# (and two on/off switches of OpenTelemetry's instrumentation, which hold no secret)
PASSED = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "OTEL_SDK_DISABLED",
    "OTEL_INSTRUMENTATION_A2A_SDK_ENABLED",
)


def secure_data_dir(path: Path, *, skip: tuple[Path, ...] = ()) -> None:
    os.umask(UMASK)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    for dirpath, dirnames, filenames in os.walk(path):
        here = Path(dirpath)
        # agents' own state is theirs (the SDK keeps it private itself)
        dirnames[:] = [d for d in dirnames if here / d not in skip and d != "state"]
        for d in dirnames:
            (here / d).chmod(0o700)
        for f in filenames:
            p = here / f
            if p.is_file() and not p.is_symlink():
                p.chmod(0o600)


@dataclass(frozen=True)
class AgentUser:
    name: str
    uid: int
    gid: int


def agent_user(name: str) -> AgentUser | None:
    """The unprivileged user process agents run as when berth is root (made if missing);
    None when berth is not root or `name` is empty (then agents run as berth's user)."""
    if os.geteuid() != 0 or not name:
        return None
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            raise RuntimeError(
                f"berth runs as root and must run process agents as {name!r}, which does not "
                "exist and cannot be made (no useradd); create it, or set BERTH_AGENT_USER"
            ) from None
        nologin = shutil.which("nologin") or "/bin/false"
        subprocess.run(
            [
                useradd,
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                nologin,
                name,
            ],
            check=True,
            capture_output=True,
        )
        log.info("made the system user %s for process agents", name)
        pw = pwd.getpwnam(name)
    return AgentUser(name, pw.pw_uid, pw.pw_gid)


def minimal_env(home: Path) -> dict[str, str]:
    """The part of berth's environment a process agent gets (before its BERTH_* identity
    and the spec's env): the search path and locale, nothing of berth's settings or
    secrets. HOME and TMPDIR are the agent's own state directory."""
    out = {k: os.environ[k] for k in PASSED if k in os.environ}
    out.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    out["HOME"] = str(home)
    out["TMPDIR"] = str(home)
    return out
