"""`berth ws restart` with its live phases, and `berth ws restarts` (the history)."""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from berth.cli.client import Api
from berth.cli.errors import CliError, Exit
from berth.cli.output import Out, ago, drain_summary, duration, status, table

__all__ = ["follow_restart", "restart", "restarts", "versions"]

POLL = 0.2
FINISHED = ("done", "rolled_back", "failed")


def restart(args: argparse.Namespace, api: Api, out: Out) -> None:
    body = {
        k: v
        for k, v in {
            "drain_seconds": args.drain_seconds,
            "reason": args.reason,
            "mode": args.mode,
        }.items()
        if v is not None
    }
    try:
        r = api.json("POST", f"/v1/workspaces/{args.ref}/restart", body)
    except CliError as e:
        if "is paused" in e.message:
            e.hint = f"a paused workspace starts again with `berth ws resume {args.ref}`"
        raise
    if args.no_follow:
        if out.as_json:
            out.json(r)
        else:
            out.line(
                f"restart {r['id']}"
                + (" (joined the one already running)" if r.get("joined") else "")
            )
        return
    if not out.as_json:
        joined = " (joined the one already running)" if r.get("joined") else ""
        out.line(Text.assemble("restarting ", (args.ref, "bold"), f" · {r['id']}{joined}"))
    record = follow_restart(api, out, r["workspace_id"], r, timeout=args.wait)
    if out.as_json:
        out.json(record)


def follow_restart(
    api: Api, out: Out, ws_id: str, record: dict[str, Any], *, timeout: float
) -> dict[str, Any]:
    """Follow a restart until it ends: on a terminal one updating line per phase with its
    elapsed time; piped, one plain line per phase once it ends. Raises on failure/timeout."""
    path = f"/v1/workspaces/{ws_id}/restarts/{record['id']}"
    deadline = time.monotonic() + timeout
    if out.as_json:
        record = _poll(api, path, record, deadline, lambda _: None)
    elif out.tty:
        with Live(
            _progress(record), console=out.console, refresh_per_second=10, transient=False
        ) as live:
            record = _poll(api, path, record, deadline, lambda r: live.update(_progress(r)))
    else:
        printed = [0]

        def plain(r: dict[str, Any]) -> None:
            phases = r["phases"]
            ended = len(phases) if r["phase"] in FINISHED else len(phases) - 1
            for p in phases[printed[0] : max(printed[0], ended)]:
                out.line(_phase_line(p))
            printed[0] = max(printed[0], ended)

        record = _poll(api, path, record, deadline, plain)
    if record["phase"] not in FINISHED:
        raise CliError(
            f"restart {record['id']} is still {record['phase']} after {timeout:g} s",
            Exit.PENDING,
            hint="`berth ws restarts NAME` shows how it ends",
        )
    if not out.as_json:
        rep = record.get("drain_report")
        if rep:
            out.line(f"drain: {drain_summary(rep)}")
    if record["phase"] == "failed":
        raise CliError(f"restart failed: {record.get('error')}", Exit.FAILED)
    if not out.as_json:
        out.line(f"restart {record['phase'].replace('_', ' ')} in {duration(record['seconds'])}")
    return record


def _poll(
    api: Api, path: str, record: dict[str, Any], deadline: float, show: Any
) -> dict[str, Any]:
    while True:
        show(record)
        if record["phase"] in FINISHED or time.monotonic() > deadline:
            return record
        time.sleep(POLL)
        record = api.get(path)


def _phase_line(p: dict[str, Any]) -> str:
    secs = p["seconds"]
    if secs is None and p.get("ended_at") is None:
        secs = max(0.0, time.time() - p["started_at"])
    detail = f"  {p['detail']}" if p.get("detail") else ""
    return f"  {p['phase']:<10} {duration(secs):>10}{detail}"


def _progress(r: dict[str, Any]) -> Group:
    rows: list[Any] = []
    phases = r["phases"]
    for i, p in enumerate(phases):
        running = p.get("ended_at") is None and r["phase"] not in FINISHED and i == len(phases) - 1
        secs = p["seconds"] if not running else max(0.0, time.time() - p["started_at"])
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=2)
        grid.add_column(width=10)
        grid.add_column(width=10, justify="right")
        grid.add_column()
        mark: Any = Spinner("dots", style="cyan") if running else Text("✓", style="green")
        if r["phase"] == "failed" and i == len(phases) - 1:
            mark = Text("✗", style="bold red")
        grid.add_row(mark, p["phase"], duration(secs), Text(p.get("detail") or "", style="dim"))
        rows.append(grid)
    if not phases:
        rows.append(Text("  requested…", style="dim"))
    return Group(*rows)


def restarts(args: argparse.Namespace, api: Api, out: Out) -> None:
    ws = api.get(f"/v1/workspaces/{args.ref}")
    if args.id:
        r = api.get(f"/v1/workspaces/{ws['id']}/restarts/{args.id}")
        if out.as_json:
            out.json(r)
            return
        out.fields(
            [
                ("restart", r["id"]),
                ("workspace", ws["name"]),
                ("trigger", f"{r['trigger']}{': ' + r['reason'] if r.get('reason') else ''}"),
                ("result", status(r["phase"])),
                ("took", duration(r["seconds"])),
                ("requested", ago(r["created_at"])),
                ("error", r.get("error")),
            ]
        )
        out.line()
        out.table(
            ["phase", "took", "detail"],
            [[p["phase"], duration(p["seconds"]), p.get("detail")] for p in r["phases"]],
        )
        if r.get("drain_report"):
            out.line(f"\ndrain: {drain_summary(r['drain_report'])}")
        if r.get("versions"):
            out.line()
            versions(out, r)
        return
    rows = api.get(f"/v1/workspaces/{ws['id']}/restarts?limit={args.limit}")["restarts"]
    if out.as_json:
        out.json(rows)
        return
    if not rows:
        out.note(f"{ws['name']} has not been restarted")
        return
    out.line(
        table(
            ["id", "requested", "trigger", "result", "took", "phases", "reason"],
            [
                [
                    r["id"],
                    ago(r["created_at"]),
                    r["trigger"],
                    status(r["phase"]),
                    duration(r["seconds"]),
                    " ".join(f"{p['phase']} {duration(p['seconds'])}" for p in r["phases"]),
                    r.get("error") or r.get("reason"),
                ]
                for r in rows
            ],
        )
    )


def versions(out: Out, record: dict[str, Any]) -> None:
    """A deploy's versions, its canary decision and both versions' figures."""
    v = record.get("versions")
    if not v:
        return
    out.line(f"version {v['from']} -> {v['to']}: {record['phase']}")
    if v.get("decision"):
        out.line(f"canary: {v['decision']['result']} ({v['decision']['why']})")
    figures = v.get("figures") or {}
    if figures:
        keys = ["messages", "ok", "agent_errors", "crashes", "dead"]
        out.table(
            ["version", *keys], [[n, *[f.get(k, 0) for k in keys]] for n, f in figures.items()]
        )
