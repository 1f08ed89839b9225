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

# binds BERTH_PORT (or the first argument), says so, and waits; exits 1 if it cannot bind
SERVER = """
import os, socket, sys, time
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(os.environ.get("BERTH_PORT") or sys.argv[1])))
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
        assert listens_in_session(child.pid, process.free_port()) is False  # nobody's
    finally:
        child.kill()
        child.wait()
        foreign.close()


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
    finally:
        await prov.stop(ws, 1.0)
        await prov.close()
        foreign.close()
