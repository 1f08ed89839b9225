"""`berth ws deploy`: a new version of a workspace's spec, followed live like a restart."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.text import Text

from berth.cli.client import Api
from berth.cli.errors import CliError, Exit
from berth.cli.output import Out
from berth.cli.restarts import follow_restart, versions
from berth.cli.workspaces import absolute_paths, kv

__all__ = ["decide", "deploy"]


def deploy(args: argparse.Namespace, api: Api, out: Out) -> None:
    if args.promote or args.rollback:
        decide(args, api, out, "promote" if args.promote else "rollback")
        return
    body: dict[str, Any] = {}
    if args.command:
        body["command"] = absolute_paths(list(args.command), Path.cwd())
    if args.env:
        body["env"] = dict(kv(e) for e in args.env)
    for key in (
        "image",
        "mode",
        "restart_mode",
        "drain_seconds",
        "reason",
        "canary",
        "canary_seconds",
    ):
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
    else:
        versions(out, record)
    if record["phase"] == "rolled_back":
        why = (record.get("versions") or {}).get("decision", {}).get("why")
        raise CliError(f"the canary was rolled back ({why}); the old version serves", Exit.FAILED)


def decide(args: argparse.Namespace, api: Api, out: Out, decision: str) -> None:
    r = api.json("POST", f"/v1/workspaces/{args.ref}/deploy/{decision}")
    if not out.as_json:
        out.line(Text.assemble(decision, " ", (args.ref, "bold"), f" · deploy {r['id']}"))
    record = (
        r if args.no_follow else follow_restart(api, out, r["workspace_id"], r, timeout=args.wait)
    )
    if out.as_json:
        out.json(record)
    else:
        versions(out, record)
