"""Real `berth serve` processes for end-to-end tests, and helpers to talk A2A through them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

ADMIN = "bad_test_admin_token"
ECHO = [sys.executable, "-m", "berth.examples.echo"]


# a test run twice: on berth alone, and with its fast lane (docs/fast-lane.md) in front
BOTH_PATHS = pytest.mark.parametrize("berth_server", ["python", "lane"], indirect=True)
LANE_ENV = {"BERTH_FAST_LANE": "on"}
# the other path of BOTH_PATHS, whatever the default or TESTS_FAST_LANE says
PYTHON_ENV = {"BERTH_FAST_LANE": "off"}


def require_lane(server: BerthServer, timeout: float = 15.0) -> None:
    """The fast lane must be serving (built and started): a lane test that ran on Python
    alone would prove nothing. Under CI a lane that cannot be built fails the test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(server.url + "/metrics", headers={"authorization": f"Bearer {ADMIN}"})
        if "berth_lane_up 1" in r.text:
            return
        time.sleep(0.1)
    msg = f"the fast lane is not serving:\n{server.log.read_text()[-3000:]}"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def lane_served(server: BerthServer) -> float:
    """Sends the fast lane served itself so far (0 without it)."""
    r = httpx.get(server.url + "/metrics", headers={"authorization": f"Bearer {ADMIN}"})
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in r.text.splitlines()
        if line.startswith("berth_lane_deliveries_total{")
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve_app(app: Any) -> tuple[Any, str]:
    """An aiohttp app on a free loopback port (a fake agent or berth): its runner (for
    `cleanup()`) and its base URL."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


class BerthServer:
    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "BERTH_HEARTBEAT_SECONDS": "1",
            "BERTH_HEARTBEAT_TIMEOUT": "4",
            "BERTH_LOG_LEVEL": "info",
            "BERTH_START_TIMEOUT": "30",
            # As root, berth runs process agents as an unprivileged user, which cannot execute
            # an interpreter under /root (where this machine's lives); tests/security covers
            # that default, the other suites run agents as berth's own user.
            "BERTH_AGENT_USER": "inherit",
            **(env or {}),
        }
        # the whole suite with or without the lane (docs/fast-lane.md), where a test did not choose
        if (mode := os.environ.get("TESTS_FAST_LANE")) in ("on", "off"):
            self.env.setdefault("BERTH_FAST_LANE", mode)
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / f"serve-{self.port}.log"

    @property
    def lane(self) -> bool:
        """Started with its fast lane (docs/fast-lane.md)."""
        return self.env.get("BERTH_FAST_LANE") == "on"

    def start(self, timeout: float = 30.0) -> BerthServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        env.update({"BERTH_ADMIN_TOKEN": ADMIN, **self.env})
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "berth",
                    "serve",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    *self.args,
                ],
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"berth exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"berth did not become ready:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def print_log_tail(self, chars: int = 12_000) -> None:
        """The end of the server's log and of each process agent's, on stdout (a failed
        test's report shows it)."""
        logs = [self.log, *sorted(self.data_dir.glob("**/*.log"))]
        for path in dict.fromkeys(logs):
            if path.is_file():
                text = path.read_text(errors="replace")
                print(f"----- {path} (last {chars} chars) -----\n{text[-chars:]}")

    def client(self, timeout: float = 120.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            headers={"authorization": f"Bearer {ADMIN}"},
            timeout=timeout,
            limits=httpx.Limits(max_connections=64),
        )


async def create(
    client: httpx.AsyncClient, name: str, *, online: bool = True, **spec: Any
) -> dict[str, Any]:
    body = {"name": name, "command": ECHO, **spec}
    r = await client.post("/v1/workspaces", json=body)
    assert r.status_code == 201, r.text
    ws: dict[str, Any] = r.json()
    if online:
        await wait_status(client, name, "online")
    return ws


async def wait_status(
    client: httpx.AsyncClient, ref: str, status: str, timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = await client.get(f"/v1/workspaces/{ref}")
        if r.status_code == 200:
            last = r.json()
            if last["status"] == status:
                return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"{ref} is not {status} after {timeout} s: {last}")


async def wait_cycles_done(client: httpx.AsyncClient, ref: str, timeout: float = 30.0) -> None:
    """Every restart cycle of the workspace has ended. `online` comes inside the startup
    cycle (the agent registers in its `starting` step), so a restart asked right after
    `wait_status(..., "online")` may join that cycle rather than start its own."""
    deadline = time.monotonic() + timeout
    last: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        last = (await client.get(f"/v1/workspaces/{ref}/restarts")).json()["restarts"]
        if all(r["phase"] in ("done", "rolled_back", "failed") for r in last):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{ref}'s restart cycles did not end in {timeout} s: {last}")


def send_body(
    text: str, message_id: str | None = None, *, v03: bool = False, rid: Any = 1
) -> dict[str, Any]:
    mid = message_id or str(uuid.uuid4())
    if v03:
        msg = {
            "kind": "message",
            "role": "user",
            "messageId": mid,
            "parts": [{"kind": "text", "text": text}],
        }
        return {"jsonrpc": "2.0", "id": rid, "method": "message/send", "params": {"message": msg}}
    msg = {"role": "ROLE_USER", "messageId": mid, "parts": [{"text": text}]}
    return {"jsonrpc": "2.0", "id": rid, "method": "SendMessage", "params": {"message": msg}}


async def send(
    client: httpx.AsyncClient,
    ref: str,
    text: str,
    message_id: str | None = None,
    *,
    wait: float | None = None,
    v03: bool = False,
    rid: Any = 1,
) -> httpx.Response:
    headers = {} if v03 else {"a2a-version": "1.0"}
    if wait is not None:
        headers["x-berth-wait"] = str(wait)
    return await client.post(
        f"/v1/workspaces/{ref}/a2a",
        json=send_body(text, message_id, v03=v03, rid=rid),
        headers=headers,
    )


def reply_text(doc: dict[str, Any]) -> str:
    """The text of an echo reply, v1.0 or v0.3, message or task."""
    res = doc["result"]
    msg = res.get("message") or (res if res.get("kind") == "message" else None)
    if msg is None:
        task = res.get("task") or res
        parts = [p for a in task.get("artifacts") or [] for p in a.get("parts") or []]
        if not parts and task.get("status", {}).get("message"):
            parts = task["status"]["message"].get("parts") or []
    else:
        parts = msg.get("parts") or []
    return "".join(p.get("text", "") for p in parts)


def executions(state_dir: str | Path) -> tuple[Counter[str], Counter[str]]:
    """(starts, dones) per messageId from the echo's executions.log."""
    starts: Counter[str] = Counter()
    dones: Counter[str] = Counter()
    path = Path(state_dir) / "executions.log"
    if not path.exists():
        return starts, dones
    for line in path.read_text().splitlines():
        kind, _, mid = line.partition(" ")
        if kind == "start":
            starts[mid] += 1
        elif kind == "done":
            dones[mid] += 1
    return starts, dones


async def wait_deliveries_final(
    client: httpx.AsyncClient, ids: list[str], timeout: float = 60.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        out = [(await client.get(f"/v1/deliveries/{i}")).json() for i in ids]
        if all(d["status"] in ("done", "dead", "canceled", "expired") for d in out):
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"not final after {timeout} s: {[d['status'] for d in out]}")
        await asyncio.sleep(0.2)
