"""Run inside a network namespace of its own (tests/security/test_ssrf.py starts it with
`unshare -n`): 169.254.169.254 is on this namespace's loopback with a listener that
counts connections. berth must refuse every way to make it send there. Prints a JSON
report on its last line."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from pathlib import Path

import httpx
from aiohttp import web

from tests.e2e.harness import ADMIN, BerthServer, free_port, send_body

METADATA = "169.254.169.254"


class Listener:
    def __init__(self, port: int) -> None:
        self.hits = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((METADATA, port))
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            self.hits += 1
            conn.close()


async def redirector() -> tuple[web.AppRunner, str]:
    """A loopback agent (allowed) that answers everything with a redirect to metadata."""

    async def handle(_: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"http://{METADATA}/latest/meta-data/")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/"


async def main(data: Path) -> dict[str, object]:
    listeners = [Listener(80), Listener(8080)]
    report: dict[str, object] = {}
    # the redirecting agent never heartbeats: silence must not hold its message (4 s here)
    server = BerthServer(data, env={"BERTH_HEARTBEAT_TIMEOUT": "300"}).start()
    runner, redirect_url = await redirector()
    try:
        async with httpx.AsyncClient(
            base_url=server.url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=60
        ) as c:
            made = []
            for i, url in enumerate(
                [
                    f"http://{METADATA}/",
                    f"http://{METADATA}:8080/a2a",
                    f"http://[::ffff:{METADATA}]/",
                    "http://169.254.1.1/",
                ]
            ):
                r = await c.post(
                    "/v1/workspaces", json={"name": f"ext{i}", "runtime": "external", "url": url}
                )
                made.append((r.status_code, r.json()["error"]["code"]))
            report["create"] = made
            r = await c.post("/v1/workspaces", json={"name": "reg", "runtime": "external"})
            agent_token = r.json()["agent_token"]
            regs = []
            for url in (f"http://{METADATA}:80/", f"http://{METADATA}:8080/"):
                rr = await c.post(
                    "/v1/agents/register",
                    headers={"authorization": f"Bearer {agent_token}"},
                    json={"url": url},
                )
                regs.append((rr.status_code, rr.json()["error"]["code"]))
            report["register"] = regs
            # an allowed agent that redirects: berth does not follow
            rr = await c.post(
                "/v1/agents/register",
                headers={"authorization": f"Bearer {agent_token}"},
                json={"url": redirect_url},
            )
            report["redirector_registered"] = rr.status_code
            sent = await c.post(
                "/v1/workspaces/reg/a2a",
                json=send_body("hi", "redir-1"),
                headers={"a2a-version": "1.0", "x-berth-wait": "20"},
            )
            report["redirect_send"] = sent.status_code
            report["redirect_delivery"] = (
                await c.get("/v1/workspaces/reg/deliveries/by-message-id?message_id=redir-1")
            ).json()["status"]
            got = await c.get("/v1/workspaces/reg/a2a/.well-known/agent-card.json")
            report["card"] = got.status_code
        report["hits_during"] = sum(li.hits for li in listeners)
        # positive control: the listener does count a connection when one is made
        with socket.create_connection((METADATA, 80), timeout=5):
            pass
        await asyncio.sleep(0.2)
        report["hits_control"] = sum(li.hits for li in listeners)
    finally:
        await runner.cleanup()
        server.stop()
        server.kill9()
    return report


if __name__ == "__main__":
    out = asyncio.run(main(Path(sys.argv[1])))
    print(json.dumps(out))
