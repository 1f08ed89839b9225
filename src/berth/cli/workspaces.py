"""`berth ws …`: create, ls, show, pause, resume, rm, logs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.text import Text

from berth.cli.client import Api
from berth.cli.errors import CliError, Exit
from berth.cli.output import Out, ago, drain_summary, duration, status, when
from berth.cli.restarts import follow_restart

__all__ = ["absolute_paths", "create", "kv", "logs", "ls", "pause", "resume", "rm", "show"]

STARTED = ("online", "failed", "paused")


def absolute_paths(command: list[str], cwd: Path) -> list[str]:
    """The agent's argv with relative paths made absolute against the creator's folder: the
    agent runs in its own state directory, where `python my_agent.py` would find nothing.
    An argument is taken for a path if it names an existing file there (or contains a `/`
    and names an existing file or folder); options and bare program names are left alone."""
    out = []
    for i, arg in enumerate(command):
        p = Path(arg)
        if arg.startswith("-") or p.is_absolute() or "=" in arg:
            out.append(arg)
            continue
        target = cwd / p
        looks_like_path = "/" in arg or (i > 0 and target.is_file())
        if looks_like_path and target.exists():
            out.append(str(target.resolve()))
        else:
            out.append(arg)
    return out


def create(args: argparse.Namespace, api: Api, out: Out) -> None:
    body: dict[str, Any] = {"name": args.name, "runtime": args.runtime}
    command = list(args.command)
    if command and args.runtime == "process":
        command = absolute_paths(command, Path.cwd())
    if command:
        body["command"] = command
    for key in (
        "image",
        "url",
        "max_concurrency",
        "drain_seconds",
        "restart_policy",
        "memory",
        "max_queue",
        "max_queue_age",
        "idle_suspend_seconds",
        "card",
        "restart_mode",
    ):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.cpus is not None:
        body["cpus"] = args.cpus
    if args.env:
        body["env"] = dict(kv(e) for e in args.env)
    if args.allow:
        body["allowed_callers"] = args.allow
    ws = api.json("POST", "/v1/workspaces", body)
    secrets = {k: ws[k] for k in ("token", "agent_token") if k in ws}
    waits = args.wait > 0 and args.runtime != "external"
    if waits:
        ws = _wait_started(api, ws["id"], args.wait, out)
    if out.as_json:
        out.json({**ws, **secrets})
    else:
        out.line(
            Text.assemble(
                "created ", (ws["name"], "bold"), f" ({ws['id']}): ", status(ws["status"])
            )
        )
        if ws.get("command"):
            out.line(f"command: {' '.join(ws['command'])}")
        out.line(f"caller credential workspace:{ws['name']} (shown once): {secrets['token']}")
        if "agent_token" in secrets:
            out.line(f"agent credential agent:{ws['name']} (shown once): {secrets['agent_token']}")
        if ws["runtime"] == "external" and ws["status"] != "online":
            out.note("the agent comes online when it registers with its agent credential")
    if ws["status"] == "failed":
        raise CliError(
            f"{ws['name']} failed to start: {ws.get('last_error') or 'no reason recorded'}"
            + _log_tail(api, ws["id"]),
            Exit.FAILED,
            hint=f"fix it, then `berth ws restart {ws['name']}` (or `berth ws rm {ws['name']}`)",
        )
    if waits and ws["status"] not in STARTED:
        raise CliError(
            f"{ws['name']} is still {ws['status']} after {args.wait:g} s",
            Exit.PENDING,
            hint=f"`berth ws show {ws['name']}` and `berth ws logs {ws['name']}` tell more",
        )


def _wait_started(api: Api, ws_id: str, timeout: float, out: Out) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with out.err.status("starting…", spinner="dots") if out.tty else _Null():
        while True:
            ws: dict[str, Any] = api.get(f"/v1/workspaces/{ws_id}")
            if ws["status"] in STARTED or time.monotonic() > deadline:
                return ws
            time.sleep(0.2)


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _log_tail(api: Api, ws_id: str, lines: int = 6) -> str:
    try:
        text = api.call("GET", f"/v1/workspaces/{ws_id}/logs?tail={lines}").text.rstrip()
    except CliError:
        return ""
    return (
        "\nlast lines of its log:\n" + "\n".join("  " + x for x in text.splitlines())
        if text
        else ""
    )


def ls(args: argparse.Namespace, api: Api, out: Out) -> None:
    rows = api.get("/v1/workspaces")["workspaces"]
    if out.as_json:
        out.json(rows)
        return
    if not rows:
        out.note("no workspaces yet: `berth ws create NAME -- COMMAND…`")
        return
    now = time.time()
    out.table(
        [
            "name",
            "runtime",
            "status",
            "queued",
            "in flight",
            "restarts",
            "crashes",
            "heartbeat",
            "reason",
        ],
        [
            [
                w["name"],
                w["runtime"],
                status(w["status"]),
                w.get("queue_depth"),
                w.get("in_flight"),
                w["restart_count"],
                w["crash_count"],
                ago(w.get("last_heartbeat"), now),
                _reason(w),
            ]
            for w in rows
        ],
    )


def _reason(w: dict[str, Any]) -> str:
    """Why a workspace is not serving (its last error), or "" when it is fine."""
    if w["status"] in ("failed", "offline", "provisioning") and w.get("last_error"):
        return str(w["last_error"])
    return ""


def show(args: argparse.Namespace, api: Api, out: Out) -> None:
    w = api.get(f"/v1/workspaces/{args.ref}")
    restarts = api.get(f"/v1/workspaces/{w['id']}/restarts?limit=1")["restarts"]
    if out.as_json:
        out.json({**w, "last_restart": restarts[0] if restarts else None})
        return
    what = {
        "process": " ".join(w.get("command") or []),
        "docker": w.get("image"),
        "external": w.get("url"),
    }.get(w["runtime"])
    st = status(w["status"])
    if _reason(w):
        st.append(f"  ({_reason(w)})")
    out.fields(
        [
            ("name", w["name"]),
            ("id", w["id"]),
            ("status", st),
            ("runtime", f"{w['runtime']}: {what}" if what else w["runtime"]),
            ("agent url", w.get("url")),
            ("pid", w.get("pid")),
            ("container", w.get("container")),
            ("state dir", w.get("state_dir")),
            (
                "queue",
                f"{w.get('queue_depth', 0)} queued, {w.get('in_flight', 0)} in flight "
                f"(max concurrency {w['max_concurrency']}), agent reports {w['active_tasks']} active",
            ),
            ("heartbeat", ago(w.get("last_heartbeat"))),
            ("restarts", f"{w['restart_count']} restarts, {w['crash_count']} crashes"),
            ("last restart", _last_restart(restarts[0]) if restarts else None),
            (
                "policy",
                f"restart {w['restart_policy']}, {w['restart_mode']}, drain {w['drain_seconds']:g} s",
            ),
            ("version", f"{w['version']}" + (f", {_peer(w['peer'])}" if w.get("peer") else "")),
            ("callers", ", ".join(["operator", *(w.get("allowed_callers") or [])])),
            ("env", ", ".join(w.get("env") or [])),
            ("last error", w.get("last_error") if not _reason(w) else None),
            ("created", when(w.get("created_at"))),
        ]
    )


def _peer(p: dict[str, Any]) -> str:
    share = f", {p['canary']} % of new messages" if p.get("canary") else ""
    return f"version {p['version']} {'starting' if p['role'] == 'next' else 'stopping'}{share}"


def _last_restart(r: dict[str, Any]) -> str:
    took = "still running" if r["seconds"] is None else f"in {duration(r['seconds'])}"
    return f"{r['phase']} {took}, {ago(r['created_at'])} ({r['trigger']}{': ' + r['reason'] if r.get('reason') else ''})"


def pause(args: argparse.Namespace, api: Api, out: Out) -> None:
    r = api.json("POST", f"/v1/workspaces/{args.ref}/pause")
    if out.as_json:
        out.json(r)
        return
    w = r["workspace"]
    out.line(Text.assemble((w["name"], "bold"), ": ", status(w["status"])))
    out.line(f"drain: {drain_summary(r.get('drain_report'))}")
    out.note(f"messages sent now are held until `berth ws resume {w['name']}`")


def resume(args: argparse.Namespace, api: Api, out: Out) -> None:
    r = api.json("POST", f"/v1/workspaces/{args.ref}/resume")
    w = r["workspace"]
    if args.no_follow:
        if out.as_json:
            out.json(r)
        else:
            out.line(
                Text.assemble((w["name"], "bold"), ": starting (restart ", r["restart"]["id"], ")")
            )
        return
    if not out.as_json:
        out.line(Text.assemble("resuming ", (w["name"], "bold")))
    record = follow_restart(api, out, w["id"], r["restart"], timeout=args.wait)
    now = api.get(f"/v1/workspaces/{w['id']}")
    if out.as_json:
        out.json({"workspace": now, "restart": record})
    else:
        out.line(Text.assemble((now["name"], "bold"), ": ", status(now["status"])))


def rm(args: argparse.Namespace, api: Api, out: Out) -> None:
    r = api.json("DELETE", f"/v1/workspaces/{args.ref}")
    if out.as_json:
        out.json(r)
        return
    out.line(f"removed {r['workspace']['name']}; canceled {len(r['canceled'])} pending deliveries")
    for d in r["canceled"]:
        out.line(f"  canceled {d['id']} (message {d['message_id']})")


def logs(args: argparse.Namespace, api: Api, out: Out) -> None:
    ws = api.get(f"/v1/workspaces/{args.ref}")

    def fetch() -> list[str]:
        return api.call("GET", f"/v1/workspaces/{ws['id']}/logs?tail={args.tail}").text.splitlines()

    def emit(lines: list[str]) -> None:
        for x in lines:
            if out.as_json:
                out.json({"workspace": ws["name"], "line": x}, lines=True)
            else:
                print(x, flush=True)

    seen = fetch()
    emit(seen)
    while args.follow:
        time.sleep(0.5)
        now = fetch()
        emit(_new_lines(seen, now))
        seen = now


def _new_lines(old: list[str], new: list[str]) -> list[str]:
    """The lines of `new` after the end of `old` (both tails of one growing log)."""
    if not old:
        return new
    for k in range(min(len(old), len(new)), 0, -1):
        if new[:k] == old[-k:]:
            return new[k:]
    return new


def kv(s: str) -> tuple[str, str]:
    k, sep, v = s.partition("=")
    if not sep or not k:
        raise CliError(f"--env takes KEY=VALUE, not {s!r}", Exit.USAGE)
    return k, v
