"""Durable message/send through berth vs straight to the same echo agent.

    python bench/proxy.py [--seconds 5] [--database-url postgresql://…] [--clients aiohttp,httpx]

Starts one echo agent on its own (the direct baseline) and one berth per outbound client
(each with an echo workspace), then drives both with the same closed-loop load at
concurrency 1 and 16. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import run, summary  # noqa: E402

ADMIN = "bench-admin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    return {**base, "OTEL_INSTRUMENTATION_A2A_SDK_ENABLED": "false", **extra}


def start_echo(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "berth.examples.echo", "--port", str(port)],
        env=env(BERTH_STATE_DIR=str(tmp / "direct-state")),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
    except BaseException:  # never leave an agent behind when it does not come up
        proc.kill()
        proc.wait()
        raise
    return proc, f"http://127.0.0.1:{port}/"


def start_berth(
    tmp: Path, client: str, database_url: str | None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    data = tmp / f"berth-{client}"
    extra = {
        "BERTH_ADMIN_TOKEN": ADMIN,
        "BERTH_AGENT_CLIENT": client,
        "BERTH_LOG_LEVEL": "warning",
        "BERTH_AGENT_USER": "inherit",  # the interpreter may live where no other user reaches
    }
    if database_url:
        extra["BERTH_DATABASE_URL"] = database_url
    proc = subprocess.Popen(
        [sys.executable, "-m", "berth", "serve", "--port", str(port), "--data-dir", str(data)],
        env=env(**extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/healthz")
    h = {"authorization": f"Bearer {ADMIN}"}
    name = f"bench-{client}-{os.getpid()}"
    r = httpx.post(
        url + "/v1/workspaces",
        headers=h,
        json={
            "name": name,
            "command": [sys.executable, "-m", "berth.examples.echo"],
            "max_concurrency": 64,
        },
    )
    r.raise_for_status()
    for _ in range(300):
        if httpx.get(f"{url}/v1/workspaces/{name}", headers=h).json()["status"] == "online":
            break
        time.sleep(0.1)
    return proc, f"{url}/v1/workspaces/{name}/a2a"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--database-url")
    ap.add_argument("--clients", default="aiohttp,httpx")
    ap.add_argument("--concurrency", default="1,16")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        procs = []
        try:
            echo, direct_url = start_echo(tmp)
            procs.append(echo)
            targets = []
            for client in args.clients.split(","):
                p, url = start_berth(tmp, client, args.database_url)
                procs.append(p)
                targets.append((client, url))
            store = "postgresql" if args.database_url else "sqlite"
            print(
                f"# berth proxy benchmark: {os.cpu_count()} cores, store {store}, {args.seconds:g} s per run"
            )
            for c in levels:
                direct = await run("direct to echo", direct_url, c, args.seconds, {})
                print(direct.row())
                for client, url in targets:
                    via = await run(
                        f"via berth ({client})",
                        url,
                        c,
                        args.seconds,
                        {"authorization": f"Bearer {ADMIN}"},
                    )
                    print(via.row())
                    print(summary(direct, via))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    asyncio.run(main())
