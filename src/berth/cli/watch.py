"""`berth events [-f]` and the live `berth top`."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any
from urllib.parse import quote

from rich.console import Group
from rich.live import Live
from rich.text import Text

from berth.cli.client import Api
from berth.cli.output import Out, ago, status, table

__all__ = ["events", "summary", "top"]


def events(args: argparse.Namespace, api: Api, out: Out) -> None:
    names = _Names(api)
    q = f"?workspace={quote(args.ws)}" if args.ws else ""
    if args.limit > 0:
        sep = "&" if q else "?"
        for e in api.get(f"/v1/events/recent{q}{sep}limit={args.limit}")["events"]:
            _print_event(out, names, e)
    if not args.follow:
        return
    kind = "message"
    for line in api.stream_lines(f"/v1/events{q}"):
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            payload = json.loads(line[5:])
            _print_event(out, names, {"kind": payload.get("kind", kind), **payload})


def _print_event(out: Out, names: _Names, e: dict[str, Any]) -> None:
    if out.as_json:
        out.json(e, lines=True)
        return
    at = time.strftime("%H:%M:%S", time.localtime(e.get("at") or time.time()))
    name = e.get("name") or names.get(e.get("workspace_id"))
    kind = str(e.get("kind"))
    style = "red" if kind in ("delivery.dead", "workspace.crashed") else ""
    out.line(
        Text.assemble((at, "dim"), "  ", (f"{kind:<21}", style), " ", f"{name:<16} ", summary(e))
    )


def summary(e: dict[str, Any]) -> str:
    """One human line for an event's details (the kind and workspace are printed apart)."""
    kind = e.get("kind")
    rid = str(e.get("restart_id") or "")[:8]
    if kind == "workspace.state":
        return f"{e.get('previous')} → {e.get('state')}"
    if kind == "workspace.registered":
        return f"at {e.get('url')}"
    if kind == "workspace.crashed":
        return str(e.get("detail") or "")
    if kind == "restart.requested":
        return f"{rid} {e.get('trigger')}" + (f": {e['reason']}" if e.get("reason") else "")
    if kind == "restart.phase":
        return f"{rid} {e.get('phase')}"
    if kind == "restart.finished":
        return f"{rid} {e.get('phase')}" + (f": {e['error']}" if e.get("error") else "")
    if str(kind).startswith("delivery."):
        why = f": {e['reason']}" if e.get("reason") else ""
        return f"message {e.get('message_id')}{why}"
    skip = {"kind", "at", "replica", "workspace_id", "name"}
    return " ".join(f"{k}={v}" for k, v in e.items() if k not in skip)


class _Names:
    """Workspace names by id, fetched once and again when an unknown id shows up."""

    def __init__(self, api: Api) -> None:
        self._api = api
        self._names: dict[str, str] = {}
        self._fetched = 0.0

    def get(self, ws_id: Any) -> str:
        if not isinstance(ws_id, str):
            return "-"
        if ws_id not in self._names and time.monotonic() - self._fetched > 2:
            self._fetched = time.monotonic()
            for w in self._api.get("/v1/workspaces")["workspaces"]:
                self._names[w["id"]] = w["name"]
        return self._names.get(ws_id, ws_id[:12])


def top(args: argparse.Namespace, api: Api, out: Out) -> None:
    if out.as_json:
        out.json({"at": time.time(), "workspaces": api.get("/v1/workspaces")["workspaces"]})
        return
    if args.once or not out.tty:
        out.line(_screen(api))
        return
    with Live(_screen(api), console=out.console, screen=False, auto_refresh=False) as live:
        while True:
            time.sleep(args.interval)
            live.update(_screen(api), refresh=True)


def _screen(api: Api) -> Group:
    rows = api.get("/v1/workspaces")["workspaces"]
    now = time.time()
    queued = sum(w.get("queue_depth") or 0 for w in rows)
    busy = sum(w.get("in_flight") or 0 for w in rows)
    online = sum(1 for w in rows if w["status"] == "online")
    head = Text.assemble(
        ("berth ", "bold"),
        f"{api.url} · {time.strftime('%H:%M:%S')} · {len(rows)} workspace{'' if len(rows) == 1 else 's'}, {online} online · ",
        (f"{queued} queued", "cyan" if queued else ""),
        ", ",
        (f"{busy} in flight", "cyan" if busy else ""),
    )
    body = table(
        [
            "name",
            "status",
            "queued",
            "in flight",
            "active",
            "restarts",
            "crashes",
            "heartbeat",
            "reason",
        ],
        [
            [
                w["name"],
                status(w["status"]),
                w.get("queue_depth"),
                w.get("in_flight"),
                w.get("active_tasks"),
                w["restart_count"],
                w["crash_count"],
                ago(w.get("last_heartbeat"), now),
                w.get("last_error") if w["status"] in ("failed", "offline") else "",
            ]
            for w in rows
        ],
    )
    return Group(head, Text(""), body)
