"""`berth ws deploy`: a new version of a workspace's spec, followed live like a restart."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.text import Text

from berth.cli.client import Api
from berth.cli.output import Out
from berth.cli.restarts import follow_restart
from berth.cli.workspaces import absolute_paths, kv

__all__ = ["deploy"]


def deploy(args: argparse.Namespace, api: Api, out: Out) -> None:
    body: dict[str, Any] = {}
    if args.command:
        body["command"] = absolute_paths(list(args.command), Path.cwd())
    if args.env:
        body["env"] = dict(kv(e) for e in args.env)
    for key in ("image", "mode", "restart_mode", "drain_seconds", "reason"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    r = api.json("POST", f"/v1/workspaces/{args.ref}/deploy", body)
    if not out.as_json:
        out.line(Text.assemble("deploying ", (args.ref, "bold"), f" · {r['id']} ({r['mode']})"))
    record = (
        r if args.no_follow else follow_restart(api, out, r["workspace_id"], r, timeout=args.wait)
    )
    if out.as_json:
        out.json(record)
    elif record.get("versions") and record.get("phase") == "done":
        v = record["versions"]
        out.line(f"version {v['from']} -> {v['to']}")
