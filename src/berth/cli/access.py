"""`berth creds …` and `berth ws allow|deny …`: credentials and allow-lists
(docs/security.md)."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from berth.cli.client import Api
from berth.cli.errors import CliError, Exit
from berth.cli.output import Out, when

__all__ = ["allow", "creds_create", "creds_ls", "creds_revoke", "creds_rotate", "deny"]


def _ref(ref: str) -> str:
    return quote(ref, safe="")


def creds_ls(args: argparse.Namespace, api: Api, out: Out) -> None:
    rows = api.get("/v1/credentials")["credentials"]
    if out.as_json:
        out.json(rows)
        return
    if not rows:
        out.note("no credentials")
        return
    out.table(
        ["subject", "role", "status", "id", "created", "rotated", "revoked"],
        [
            [
                c["subject"],
                c["role"],
                c["status"],
                c["id"],
                when(c["created_at"]),
                when(c.get("rotated_at")),
                when(c.get("revoked_at")),
            ]
            for c in rows
        ],
    )


def _secret(out: Out, got: dict[str, Any], what: str) -> None:
    if out.as_json:
        out.json(got)
        return
    out.line(f"{got['subject']} {what}")
    out.line(f"secret (shown once): {got['secret']}")


def creds_create(args: argparse.Namespace, api: Api, out: Out) -> None:
    if not (args.agent or args.name) or (args.agent and args.name):
        raise CliError("give a NAME (a caller credential) or --agent WORKSPACE", Exit.USAGE)
    body = {"agent": args.agent} if args.agent else {"name": args.name}
    got = api.json("POST", "/v1/credentials", body)
    _secret(out, got, f"({got['role']})")


def creds_rotate(args: argparse.Namespace, api: Api, out: Out) -> None:
    _secret(out, api.json("POST", f"/v1/credentials/{_ref(args.ref)}/rotate"), "rotated")


def creds_revoke(args: argparse.Namespace, api: Api, out: Out) -> None:
    got = api.json("POST", f"/v1/credentials/{_ref(args.ref)}/revoke")
    if out.as_json:
        out.json(got)
    else:
        out.line(f"{got['subject']} revoked")


def _grant(action: str, args: argparse.Namespace, api: Api, out: Out) -> None:
    got = api.json("POST", f"/v1/workspaces/{_ref(args.ref)}/{action}", {"callers": args.callers})
    if out.as_json:
        out.json(got)
        return
    allowed = ", ".join(got["allowed_callers"]) or "(only the operator)"
    out.line(f"{got['workspace']} may be called by: operator, {allowed}")


def allow(args: argparse.Namespace, api: Api, out: Out) -> None:
    _grant("allow", args, api, out)


def deny(args: argparse.Namespace, api: Api, out: Out) -> None:
    _grant("deny", args, api, out)
