"""The `process` provisioner: each workspace is a child process of berth.

The process gets a minimal environment (PATH and locale from berth's, HOME and TMPDIR its
state directory, its identity BERTH_* (docs/sdk.md) and the spec's env), a free port, its own
session (a Ctrl-C at berth's terminal reaches berth, which drains, not the agents), and a
log file per workspace. When berth is root it runs as an unprivileged user (berth.hardening).
Stop is SIGTERM, a grace period, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from berth.domain.workspace import Workspace
from berth.hardening import AgentUser, minimal_env
from berth.ports import ExitCallback, RunInfo

log = logging.getLogger("berth.process")
__all__ = ["ProcessProvisioner", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listens_in_session(sid: int, port: int) -> bool | None:
    """Whether the sockets that take connections to 127.0.0.1:`port` (bound to 127.0.0.1,
    0.0.0.0, :: or ::ffff:127.0.0.1) all belong to processes of session `sid` (an agent
    berth starts leads its own session; its children stay in it). None when nothing
    listens there (no other program answers in the agent's place either), or when it
    cannot be told: no /proc (not Linux), or the session's descriptors are not readable
    (another user's processes, without CAP_SYS_PTRACE)."""
    inodes = _loopback_listeners(port)
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    found: set[str] = set()
    denied = False
    for pid in _session(sid):  # the leader first: that is where the socket usually is
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except PermissionError:
            denied = True
            continue
        except OSError:  # gone meanwhile
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except PermissionError:
                denied = True
                continue
            except OSError:
                continue
            if link in wanted:
                found.add(link)
        if found == wanted:
            return True
    return None if denied else False


# local addresses, as /proc/net/tcp{,6} print them, that a connection to 127.0.0.1 reaches
_LOOPBACK_V4 = frozenset({"0100007F", "00000000"})  # 127.0.0.1, 0.0.0.0
_LOOPBACK_V6 = frozenset(
    {"0" * 32, "0000000000000000FFFF00000100007F"}  # ::, ::ffff:127.0.0.1
)


def _loopback_listeners(port: int) -> set[str] | None:
    """Inodes of the sockets listening on `port` that a connection to 127.0.0.1 can reach."""
    found: set[str] = set()
    seen_any = False
    for table, local in (("/proc/net/tcp", _LOOPBACK_V4), ("/proc/net/tcp6", _LOOPBACK_V6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        seen_any = True
        for line in lines:
            f = line.split()
            # "ADDR:PORT" in hex, state 0A = LISTEN, the inode in the tenth field
            if len(f) <= 9 or f[3] != "0A":
                continue
            addr, _, hex_port = f[1].rpartition(":")
            if int(hex_port, 16) == port and addr.upper() in local:
                found.add(f[9])
    return found if seen_any else None


def _session(sid: int) -> Iterator[int]:
    """The session's processes: its leader, then (only if asked for more) the others."""
    yield sid
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == sid:
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state, ppid, pgrp, session, ...
        if len(fields) > 3 and fields[3] == str(sid):
            yield int(name)


class ProcessProvisioner:
    runtime = "process"

    def __init__(self, root: Path, *, instance: str, user: AgentUser | None = None) -> None:
        self.root = root
        self.instance = instance
        self.user = user  # berth is root: agents run as this unprivileged user
        # by (workspace id, version): a deploy runs two versions side by side
        self._procs: dict[tuple[str, int], asyncio.subprocess.Process] = {}
        self._watchers: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._callbacks: list[ExitCallback] = []

    def on_exit(self, callback: ExitCallback) -> None:
        self._callbacks.append(callback)

    def state_dir(self, ws: Workspace) -> Path:
        return self.root / ws.id / "state"

    def log_path(self, ws: Workspace) -> Path:
        return self.root / ws.id / "agent.log"

    async def start(self, ws: Workspace, identity: dict[str, str]) -> RunInfo:
        if await self.is_running(ws):
            await self.stop(ws, 1.0)
        assert ws.command, "a process workspace has a command"
        state = self.state_dir(ws)
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.user is not None:
            await asyncio.to_thread(_hand_over, self.root, state, self.user)
        port = free_port()
        env = {
            **minimal_env(state),
            **ws.env,
            **identity,
            "BERTH_PORT": str(port),
            "BERTH_STATE_DIR": str(state),
            "PYTHONUNBUFFERED": "1",
        }
        logf = open(self.log_path(ws), "ab", buffering=0)  # noqa: SIM115 - handed to the child
        try:
            logf.write(f"--- berth: starting {' '.join(ws.command)} on port {port}\n".encode())
            proc = await asyncio.create_subprocess_exec(
                *ws.command,
                env=env,
                cwd=str(state),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
                **_as(self.user),
            )
        except PermissionError as e:
            if self.user is None:
                raise
            raise PermissionError(
                f"{e}: berth runs as root, so process agents run as {self.user.name}, which "
                f"cannot run {ws.command[0]}; make it reachable by that user, or set "
                "BERTH_AGENT_USER=inherit (docs/security.md)"
            ) from None
        finally:
            logf.close()
        key = (ws.id, ws.version)
        self._procs[key] = proc
        self._watchers[key] = asyncio.create_task(self._watch(key, proc))
        return RunInfo(url=f"http://127.0.0.1:{port}", pid=proc.pid, state_dir=str(state))

    async def _watch(self, key: tuple[str, int], proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._procs.get(key) is proc:
            del self._procs[key]
        for cb in self._callbacks:
            try:
                cb(key[0], code, key[1])
            except Exception:
                log.exception("exit callback failed")

    async def stop(self, ws: Workspace, grace: float) -> None:
        proc = self._procs.get((ws.id, ws.version))
        if proc is None or proc.returncode is not None:
            if ws.pid and _ours(ws.pid, ws.id, self.instance):
                await _terminate_pid(ws.pid, grace)
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            log.warning("workspace %s did not stop within %.1f s; killing it", ws.name, grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        watcher = self._watchers.pop((ws.id, ws.version), None)
        if watcher is not None:
            await asyncio.gather(watcher, return_exceptions=True)

    async def is_running(self, ws: Workspace) -> bool:
        proc = self._procs.get((ws.id, ws.version))
        return proc is not None and proc.returncode is None

    async def serves(self, ws: Workspace, url: str) -> bool | None:
        """Whether what listens at `url` (the agent's http://127.0.0.1:PORT) is this
        workspace's agent (a process of the session it leads); None when that cannot be
        told (`listens_in_session`). The port was free when berth chose it, but another
        program can take it before the agent binds it: the agent then fails to start, and
        that program would answer the card probe and get the workspace's messages."""
        proc = self._procs.get((ws.id, ws.version))
        if proc is None or proc.returncode is not None:
            return False
        parts = urlsplit(url)
        if parts.port is None or parts.hostname not in ("127.0.0.1", "localhost"):
            return None  # only loopback's listeners are looked at
        return await asyncio.to_thread(listens_in_session, proc.pid, parts.port)

    async def cleanup_orphans(self, known: dict[str, Workspace]) -> list[str]:
        """Stop agent processes a previous berth on this data directory left running.

        They drain on SIGTERM, so work they were doing finishes and is recorded by the SDK's
        dedupe; the message is then redelivered to the fresh process and answered from it."""
        stopped = []
        for pid, ws_id in await asyncio.to_thread(_instance_processes, self.instance):
            if any(k[0] == ws_id and p.pid == pid for k, p in self._procs.items()):
                continue
            ws = known.get(ws_id)
            grace = max(ws.drain_seconds + 2, 5.0) if ws is not None else 5.0
            await _terminate_pid(pid, grace)
            stopped.append(ws.name if ws is not None else ws_id)
        return stopped

    async def logs(self, ws: Workspace, tail: int = 200) -> str:
        path = self.log_path(ws)
        if not path.exists():
            return ""
        lines = path.read_bytes().decode(errors="replace").splitlines()
        return "\n".join(lines[-tail:]) + ("\n" if lines else "")

    async def remove_state(self, ws: Workspace) -> bool:
        """Delete the workspace's folder (state and log), once it is removed for good."""
        folder = self.root / ws.id
        if not folder.exists():
            return False
        await asyncio.to_thread(shutil.rmtree, folder, True)
        return True

    async def close(self) -> None:
        for t in self._watchers.values():
            t.cancel()
        await asyncio.gather(*self._watchers.values(), return_exceptions=True)


def _as(user: AgentUser | None) -> dict[str, Any]:
    """Drop to `user` in the child before it execs (uvloop takes no user/group arguments,
    but runs preexec_fn): no supplementary groups, then the group, then the user."""
    if user is None:
        return {}

    def drop() -> None:
        os.setgroups([])
        os.setgid(user.gid)
        os.setuid(user.uid)

    return {"preexec_fn": drop}


def _hand_over(root: Path, state: Path, user: AgentUser) -> None:
    """The agent's way in: the folders above its state may be traversed (not listed), and
    its state directory is its own; its log stays berth's (it writes it through a file
    descriptor berth opens)."""
    root.chmod(0o711)
    state.parent.chmod(0o711)
    for dirpath, _, filenames in os.walk(state):
        os.chown(dirpath, user.uid, user.gid)
        for f in filenames:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(dirpath, f), user.uid, user.gid, follow_symlinks=False)


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        k, _, v = item.partition(b"=")
        if k.startswith(b"BERTH_"):
            out[k.decode()] = v.decode(errors="replace")
    return out


def _ours(pid: int, ws_id: str, instance: str) -> bool:
    env = _environ(pid)
    return env.get("BERTH_INSTANCE") == instance and env.get("BERTH_WORKSPACE_ID") == ws_id


def _instance_processes(instance: str) -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        env = _environ(int(entry.name))
        if env.get("BERTH_INSTANCE") == instance and "BERTH_WORKSPACE_ID" in env:
            out.append((int(entry.name), env["BERTH_WORKSPACE_ID"]))
    return out


async def _terminate_pid(pid: int, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while loop.time() < deadline:
        if not _alive(pid):
            return
        await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
