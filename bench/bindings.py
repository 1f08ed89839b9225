"""Both A2A bindings, direct to a stock a2a-sdk agent and through berth (issue 11).

    python bench/bindings.py [--seconds 5] [--concurrency 1,8]

One stock agent (berth.examples.stock_echo) and one berth with it as an `external`
workspace; the same closed-loop SendMessage load over JSON-RPC and over HTTP+JSON
(`message:send`), direct and through berth. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy import ADMIN, env, free_port, wait_http  # noqa: E402


def _message() -> dict[str, Any]:
    return {
        "message": {
            "role": "ROLE_USER",
            "messageId": str(uuid.uuid4()),
            "parts": [{"text": "hi"}],
        }
    }


async def load(url: str, rest: bool, headers: dict[str, str], c: int, seconds: float) -> str:
    lat: list[float] = []
    errors = 0
    stop = time.monotonic() + seconds
    hdrs = {"a2a-version": "1.0", **headers}
    async with aiohttp.ClientSession() as s:

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < stop:
                body = (
                    _message()
                    if rest
                    else {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": _message()}
                )
                t0 = time.perf_counter()
                async with s.post(url, json=body, headers=hdrs) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                lat.append(time.perf_counter() - t0)

        t = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(c)))
        took = time.monotonic() - t
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000
    return (
        f"c={c:<3} {len(lat) / took:7.0f} req/s  p50 {statistics.median(lat) * 1000:6.2f} ms  "
        f"p99 {p99:7.2f} ms  errors {errors}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", default="1,8")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        aport, bport = free_port(), free_port()
        agent = subprocess.Popen(
            [sys.executable, "-m", "berth.examples.stock_echo", "--port", str(aport)],
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        berth = subprocess.Popen(
            [sys.executable, "-m", "berth", "serve", "--port", str(bport), "--data-dir", t],
            env=env(
                BERTH_ADMIN_TOKEN=ADMIN,
                BERTH_LOG_LEVEL="warning",
                BERTH_AGENT_USER="inherit",
                BERTH_FAST_LANE="off",  # both bindings through berth's Python path
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            agent_url, berth_url = f"http://127.0.0.1:{aport}", f"http://127.0.0.1:{bport}"
            wait_http(agent_url + "/.well-known/agent-card.json", 60)
            wait_http(berth_url + "/healthz", 60)
            auth = {"authorization": f"Bearer {ADMIN}"}
            spec = {"name": "b", "runtime": "external", "url": agent_url, "max_concurrency": 64}
            httpx.post(berth_url + "/v1/workspaces", headers=auth, json=spec).raise_for_status()
            for _ in range(600):
                ws = httpx.get(f"{berth_url}/v1/workspaces/b", headers=auth).json()
                if ws["status"] == "online":
                    break
                time.sleep(0.1)
            proxy = f"{berth_url}/v1/workspaces/b/a2a"
            print(f"# bindings: {os.cpu_count()} cores, sqlite, {args.seconds:g} s per run")
            for c in (int(x) for x in args.concurrency.split(",")):
                for label, url, rest, h in (
                    ("JSON-RPC direct", agent_url + "/", False, {}),
                    ("JSON-RPC via berth", proxy, False, auth),
                    ("HTTP+JSON direct", agent_url + "/a2a/rest/message:send", True, {}),
                    ("HTTP+JSON via berth", proxy + "/rest/message:send", True, auth),
                ):
                    print(f"{label:<22}", asyncio.run(load(url, rest, h, c, args.seconds)))
        finally:
            for p in (berth, agent):
                p.terminate()
                p.wait(30)


if __name__ == "__main__":
    main()
