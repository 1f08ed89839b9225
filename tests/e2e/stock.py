"""A stock a2a-sdk agent (berth.examples.stock_echo) for end-to-end tests, and helpers
that send the same request directly and through berth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.harness import ADMIN, free_port

STOCK = [sys.executable, "-m", "berth.examples.stock_echo"]
V1 = {"a2a-version": "1.0"}


class StockAgent:
    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"stock-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> StockAgent:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [*STOCK, "--port", str(self.port)],
                env=env,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/.well-known/agent-card.json", timeout=1).is_success:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the stock agent did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Ends:
    """The same agent reached two ways: `direct` (the agent itself) and `berth`."""

    def __init__(self, agent_url: str, berth_url: str, ws: str) -> None:
        self.jsonrpc = {"direct": agent_url + "/", "berth": f"{berth_url}/v1/workspaces/{ws}/a2a"}
        self.rest = {
            "direct": agent_url + "/a2a/rest",
            "berth": f"{berth_url}/v1/workspaces/{ws}/a2a/rest",
        }
        self.card = {
            "direct": agent_url + "/.well-known/agent-card.json",
            "berth": f"{berth_url}/v1/workspaces/{ws}/.well-known/agent-card.json",
        }
        self.http = httpx.Client(timeout=60, headers=V1)

    def auth(self, end: str) -> dict[str, str]:
        return {"authorization": f"Bearer {ADMIN}"} if end == "berth" else {}

    def rpc(self, end: str, method: str, params: Any, rid: Any = 1, **kw: Any) -> httpx.Response:
        body = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
        headers = {**self.auth(end), **kw.pop("headers", {})}
        return self.http.post(self.jsonrpc[end], json=body, headers=headers, **kw)

    def rest_call(self, end: str, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.auth(end), **kw.pop("headers", {})}
        return self.http.request(method, self.rest[end] + path, headers=headers, **kw)

    def stream(
        self, end: str, url: str, body: Any = None, method: str = "POST", **kw: Any
    ) -> tuple[int, str, list[dict[str, Any]], bytes]:
        """(status, content type, SSE events as JSON, plain body when not a stream)."""
        headers = {**self.auth(end), "accept": "text/event-stream", **kw.pop("headers", {})}
        events: list[dict[str, Any]] = []
        with self.http.stream(method, url, json=body, headers=headers, **kw) as r:
            ctype = r.headers.get("content-type", "")
            if not ctype.startswith("text/event-stream"):
                return r.status_code, ctype, [], r.read()
            for line in r.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:].strip()))
            return r.status_code, ctype, events, b""

    def close(self) -> None:
        self.http.close()


def message(text: str, *, task_id: str | None = None, mid: str | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "role": "ROLE_USER",
        "messageId": mid or str(uuid.uuid4()),
        "parts": [{"text": text}],
    }
    if task_id:
        msg["taskId"] = task_id
    return {"message": msg}


def kinds(events: list[dict[str, Any]]) -> list[str]:
    """The kind of each stream event (task, statusUpdate, ...), JSON-RPC or HTTP+JSON."""
    out = []
    for e in events:
        res = e.get("result", e)
        out.append("error" if "error" in e else next(iter(res)))
    return out


def media(ctype: str) -> str:
    return ctype.split(";")[0].strip()
