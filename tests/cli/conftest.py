"""A real `berth serve` shared by a module's CLI tests, and the CLI run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import ADMIN, ECHO, BerthServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BerthServer]:
    s = BerthServer(tmp_path_factory.mktemp("cli") / "berth").start()
    try:
        yield s
    finally:
        s.stop()
        s.kill9()


def cli_env(server: BerthServer | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    if server is not None:
        env.update(BERTH_SERVER=server.url, BERTH_ADMIN_TOKEN=ADMIN)
    env.update(extra)
    return env


def berth(
    server: BerthServer | None,
    *args: str,
    cwd: Path | None = None,
    timeout: float = 120,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "berth", *args],
        env=cli_env(server, **env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def api(
    server: BerthServer, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
) -> httpx.Response:
    return httpx.request(
        method,
        server.url + path,
        headers={"authorization": f"Bearer {ADMIN}", **(headers or {})},
        timeout=60,
        **kw,
    )


def echo(server: BerthServer, name: str, **spec: Any) -> dict[str, Any]:
    """An echo workspace, online."""
    r = api(server, "POST", "/v1/workspaces", json={"name": name, "command": ECHO, **spec})
    assert r.status_code == 201, r.text
    return wait_status(server, name, "online")


def wait_status(server: BerthServer, name: str, status: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    ws: dict[str, Any] = {}
    while time.monotonic() < deadline:
        ws = api(server, "GET", f"/v1/workspaces/{name}").json()
        if ws.get("status") == status:
            return ws
        time.sleep(0.1)
    raise AssertionError(f"{name} is not {status} after {timeout} s: {ws}")
