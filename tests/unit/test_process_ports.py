"""A process workspace's port: berth chooses a free one and hands it to the agent, but
another program can take it first. Then what answers there is not the agent, and the
prober must not bring the workspace online on its card (services/probe.py): the process
provisioner tells whether the agent's own process tree listens on the port."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import berth.adapters.process as process
from berth.adapters.process import ProcessProvisioner, listens_in_session
from berth.domain.workspace import Runtime, Workspace

# binds BERTH_PORT (or the first argument) on 127.0.0.1 (or the second argument), says so,
# and waits; exits 1 if it cannot bind
SERVER = """
import os, socket, sys, time
host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
try:
    s.bind((host, int(os.environ.get("BERTH_PORT") or sys.argv[1])))
except OSError:
    print("cannot bind", flush=True)
    sys.exit(1)
s.listen()
print("listening", flush=True)
time.sleep(60)
"""


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_a_port_is_the_session_s_only_if_one_of_its_processes_listens_there() -> None:
    foreign = _listener()
    port = process.free_port()
    child = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"listening\n"
        assert listens_in_session(child.pid, port) is True
        assert listens_in_session(child.pid, foreign.getsockname()[1]) is False  # someone else's
        assert listens_in_session(child.pid, process.free_port()) is None  # nobody listens
    finally:
        child.kill()
        child.wait()
        foreign.close()


def test_only_the_sockets_a_connection_to_127_0_0_1_reaches_count() -> None:
    """A foreign program holds 127.0.0.1:P; the agent binds [::1]:P (no conflict): the card
    probe (to 127.0.0.1) would reach the foreign program, so the port is not the agent's."""
    foreign = _listener()
    port = foreign.getsockname()[1]
    child = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port), "::1"],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"listening\n"
        assert listens_in_session(child.pid, port) is False
    finally:
        child.kill()
        child.wait()
        foreign.close()


def test_descriptors_it_may_not_read_make_the_answer_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another user's agent, berth without CAP_SYS_PTRACE (Docker's default): unknown
    (None: the card is accepted as before), not "someone else's"."""
    port = process.free_port()
    child = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"listening\n"

        def denied(path: str) -> str:
            raise PermissionError(path)

        monkeypatch.setattr(process.os, "readlink", denied)
        assert listens_in_session(child.pid, port) is None
    finally:
        child.kill()
        child.wait()


async def test_the_provisioner_tells_its_agent_from_a_program_that_took_the_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prov = ProcessProvisioner(tmp_path, instance="t")
    foreign = _listener()
    taken = foreign.getsockname()[1]
    ws = Workspace(
        id="11111111-2222-3333-4444-555555555555", name="w", runtime=Runtime.PROCESS,
        token_hash="x", command=[sys.executable, "-c", SERVER],
    )  # fmt: skip
    try:
        monkeypatch.setattr(process, "free_port", lambda: taken)  # taken before the agent binds
        run = await prov.start(ws, {})
        assert run.url == f"http://127.0.0.1:{taken}"
        assert await prov.serves(ws, run.url) is False
        monkeypatch.undo()
        run = await prov.start(ws, {})  # a fresh port
        deadline = time.monotonic() + 20
        while await prov.serves(ws, run.url) is not True:
            assert time.monotonic() < deadline, prov.log_path(ws).read_text()
            await asyncio.sleep(0.05)
        # a URL on another host than loopback (an agent's BERTH_ADVERTISE_URL): not looked at
        port = run.url.rsplit(":", 1)[1]
        assert await prov.serves(ws, f"http://agent.example:{port}") is None
        assert await prov.serves(ws, f"http://localhost:{port}") is True
    finally:
        await prov.stop(ws, 1.0)
        await prov.close()
        foreign.close()
