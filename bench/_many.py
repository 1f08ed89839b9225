"""A trivial agent that answers for many workspace identities in one process (bench/scale.py).

    python bench/_many.py --berth http://127.0.0.1:8080 --identities ids.json [--port 0]

`ids.json` is a list of {"name", "token"}. Each identity is served under `/w/<name>/`:
`message/send` / `SendMessage` answer a fixed JSON-RPC result, `signals/restart_pending`
answers "drained", `signals/resume` answers 200. The process registers every identity
(URL `http://127.0.0.1:<port>/w/<name>/`) and heartbeats each at the interval berth asks,
spread over the interval, from one scheduler loop (no task per identity). It prints
`ready <port>` once every identity is registered, then counts to stderr on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import signal
import sys
import time
from typing import Any

import aiohttp
from aiohttp import web

REPLY = {
    "message": {
        "role": "ROLE_AGENT",
        "messageId": "m",
        "parts": [{"text": "ok"}],
    }
}


class Many:
    def __init__(self, berth: str, identities: list[dict[str, str]]) -> None:
        self.berth = berth.rstrip("/")
        self.ids = {i["name"]: i["token"] for i in identities}
        self.port = 0
        self.interval: dict[str, float] = {}
        self.beats = self.registers = self.failures = self.messages = 0

    # serving ---------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.Response:
        name, rest = request.match_info["name"], request.match_info["rest"]
        if name not in self.ids:
            return web.Response(status=404)
        body = await request.read()
        if rest == "signals/restart_pending":
            doc = {"drained": True, "completed": [], "unfinished": [], "in_flight": 0}
            return web.json_response({"jsonrpc": "2.0", "id": "drain", "result": doc})
        if rest == "signals/resume":
            return web.json_response({"jsonrpc": "2.0", "id": "resume", "result": {}})
        if rest:
            return web.Response(status=404)
        try:
            rid = json.loads(body).get("id")
        except ValueError:
            rid = None
        self.messages += 1
        return web.json_response({"jsonrpc": "2.0", "id": rid, "result": REPLY})

    # registering and heartbeating -------------------------------------------
    async def register(self, s: aiohttp.ClientSession, name: str) -> None:
        body = {"url": f"http://127.0.0.1:{self.port}/w/{name}/", "agent_card": {"name": name}}
        delay = 0.1
        while True:
            try:
                async with s.post(
                    self.berth + "/v1/agents/register", json=body, headers=self._auth(name)
                ) as r:
                    if r.status == 200:
                        self.interval[name] = float((await r.json())["heartbeat_seconds"])
                        self.registers += 1
                        return
            except aiohttp.ClientError:
                pass
            self.failures += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def beat(self, s: aiohttp.ClientSession, name: str) -> None:
        try:
            async with s.post(
                self.berth + "/v1/agents/heartbeat",
                json={"active_tasks": 0},
                headers=self._auth(name),
            ) as r:
                doc: dict[str, Any] = await r.json() if r.status == 200 else {}
                self.beats += 1
                if "heartbeat_seconds" in doc:
                    self.interval[name] = float(doc["heartbeat_seconds"])
                if r.status in (404, 409) or doc.get("reregister"):
                    await self.register(s, name)
        except (aiohttp.ClientError, ValueError):
            self.failures += 1

    def _auth(self, name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.ids[name]}"}

    async def run(self, s: aiohttp.ClientSession) -> None:
        sem = asyncio.Semaphore(32)

        async def reg(name: str) -> None:
            async with sem:
                await self.register(s, name)

        await asyncio.gather(*(reg(n) for n in self.ids))
        print(f"ready {self.port}", flush=True)
        now = time.monotonic()
        due = [(now + random.uniform(0, self.interval[n]), n) for n in self.ids]
        heapq.heapify(due)
        pending: set[asyncio.Task[None]] = set()
        while True:
            at, name = due[0]
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            heapq.heapreplace(due, (at + self.interval[name], name))
            t = asyncio.create_task(self.beat(s, name))
            pending.add(t)
            t.add_done_callback(pending.discard)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--berth", required=True)
    ap.add_argument("--identities", required=True)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    with open(args.identities) as f:
        many = Many(args.berth, json.load(f))
    app = web.Application()
    app.router.add_post("/w/{name}/{rest:.*}", many.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    many.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:
        task = asyncio.create_task(many.run(s))
        await stop.wait()
        task.cancel()
    print(
        f"beats {many.beats} registers {many.registers} failures {many.failures} "
        f"messages {many.messages}",
        file=sys.stderr,
        flush=True,
    )
    os._exit(0)  # at once: open keep-alive connections would hold a graceful close


if __name__ == "__main__":
    asyncio.run(main())
