"""`berth send` and `berth deliveries ls|show|retry|cancel`."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any
from urllib.parse import quote

from rich.text import Text

from berth.cli.client import Api
from berth.cli.errors import CliError, Exit
from berth.cli.output import Out, ago, duration, status, when

__all__ = ["cancel", "deliveries", "retry", "send", "show", "text_of"]

HELD = {
    "paused": "the message is held until `berth ws resume {name}`",
    "failed": "{reason}. The message is held until it runs again (`berth ws restart {name}`)",
}


def send(args: argparse.Namespace, api: Api, out: Out) -> None:
    ws = api.get(f"/v1/workspaces/{args.ref}")
    held = HELD.get(ws["status"])
    if held:
        reason = ws.get("last_error") or "no reason recorded"
        out.note(
            Text(
                f"note: {ws['name']} is {ws['status']}; "
                + held.format(name=ws["name"], reason=reason),
                style="yellow",
            )
        )
    message_id = args.message_id or str(uuid.uuid4())
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {
            "message": {
                "role": "ROLE_USER",
                "messageId": message_id,
                "parts": [{"text": args.text}],
            }
        },
    }
    r = api.call(
        "POST",
        f"/v1/workspaces/{ws['id']}/a2a",
        body,
        headers={"a2a-version": "1.0", "x-berth-wait": f"{args.wait:g}"},
    )
    doc = r.json()
    if out.as_json:
        out.json(doc)
    if r.status_code == 202:
        if args.wait == 0:  # asked not to wait
            if not out.as_json:
                out.line(f"accepted: delivery {doc['delivery_id']} (message {message_id})")
            return
        raise CliError(
            f"accepted, still delivering after {args.wait:g} s: delivery {doc['delivery_id']}",
            Exit.PENDING,
            hint=f"it will still be delivered; `berth deliveries show {doc['delivery_id']}` "
            "shows it and its reply",
        )
    if "error" in doc:
        raise _reply_error(doc["error"], r.headers.get("x-berth-delivery-id"))
    if not out.as_json:
        if r.headers.get("x-berth-replayed") == "true":
            out.note(f"note: message {message_id} was answered before; this is the stored reply")
        out.line(Text(text_of(doc.get("result") or {}) or json.dumps(doc.get("result"))))


def _reply_error(err: dict[str, Any], delivery_id: str | None) -> CliError:
    data = err.get("data")
    mine = data.get("berth") if isinstance(data, dict) else None
    if isinstance(mine, dict):  # berth produced this reply: the message was not delivered
        why = f": {mine['reason']}" if mine.get("reason") else ""
        return CliError(
            f"berth did not deliver this message: {mine.get('status')}{why}",
            Exit.FAILED,
            hint=f"`berth deliveries show {mine.get('delivery_id')}`; "
            f"`berth deliveries retry {mine.get('delivery_id')}` queues it again",
        )
    hint = f"`berth deliveries show {delivery_id}`" if delivery_id else None
    return CliError(
        f"the agent answered with an error {err.get('code')}: {err.get('message')}",
        Exit.FAILED,
        hint=hint,
    )


def text_of(result: Any) -> str:
    """The text of a reply's result (v1.0 or v0.3; a Message or a Task)."""
    if not isinstance(result, dict):
        return ""
    msg = result.get("message") or result
    texts = [
        str(p["text"]) for p in msg.get("parts") or [] if isinstance(p, dict) and p.get("text")
    ]
    task = result.get("task") or (result if result.get("kind") == "task" else None)
    if not texts and isinstance(task, dict):
        for a in task.get("artifacts") or []:
            texts += [str(p["text"]) for p in a.get("parts") or [] if p.get("text")]
    return "\n".join(texts)


def deliveries(args: argparse.Namespace, api: Api, out: Out) -> None:
    ws = api.get(f"/v1/workspaces/{args.ref}")
    q = f"?limit={args.limit}" + (f"&status={args.status}" if args.status else "")
    rows = api.get(f"/v1/workspaces/{ws['id']}/deliveries{q}")["deliveries"]
    if out.as_json:
        out.json(rows)
        return
    if not rows:
        out.note(f"no {args.status + ' ' if args.status else ''}deliveries for {ws['name']}")
        return
    now = time.time()
    out.table(
        [
            "id",
            "caller",
            "message id",
            "status",
            "forwards",
            "failures",
            "created",
            "took",
            "reason",
        ],
        [
            [
                d["id"],
                d.get("caller"),
                d["message_id"],
                status(d["status"]),
                d["forwards"],
                d["attempts"],
                ago(d["created_at"], now),
                _took(d),
                d.get("reason"),
            ]
            for d in rows
        ],
    )
    if out.tty:
        out.note(
            Text(
                "FORWARDS: times berth sent the message to the agent (a restart can make it "
                "more than 1). FAILURES: forwards that failed and count toward the dead-letter "
                "limit.",
                style="dim",
            )
        )


def _took(d: dict[str, Any]) -> str:
    if d.get("finished_at") is None:
        return "-"
    return duration(d["finished_at"] - d["created_at"])


def _resolve(api: Api, key: str, ws: str | None) -> dict[str, Any]:
    """A delivery with its request and workspace name, by id, or by messageId within `ws`."""
    d: dict[str, Any] | None = None
    if ws:
        try:
            d = api.get(f"/v1/workspaces/{ws}/deliveries/by-message-id?message_id={quote(key)}")
        except CliError as e:
            if e.code is not Exit.NOT_FOUND:
                raise
    if d is None:
        d = api.get(f"/v1/deliveries/{quote(key)}")
    request = api.get(f"/v1/deliveries/{d['id']}/request")["request"]
    name = api.get(f"/v1/workspaces/{d['workspace_id']}")["name"]
    if ws and name != ws and d["workspace_id"] != ws:
        raise CliError(f"delivery {key} is not one of {ws}'s", Exit.NOT_FOUND)
    return {**d, "workspace": name, "request": request}


def show(args: argparse.Namespace, api: Api, out: Out) -> None:
    d = _resolve(api, args.key, args.ws)
    if out.as_json:
        out.json(d)
        return
    st = status(d["status"])
    if d.get("reason"):
        st.append(f"  ({d['reason']})")
    first = d.get("first_forwarded_at")
    out.fields(
        [
            ("delivery", d["id"]),
            ("workspace", d.get("workspace") or d["workspace_id"]),
            ("message id", d["message_id"]),
            ("caller", d.get("caller")),
            ("method", d["method"]),
            ("status", st),
            ("forwards", f"{d['forwards']} (failures counted: {d['attempts']})"),
            ("created", when(d["created_at"])),
            ("first sent", None if first is None else f"after {duration(first - d['created_at'])}"),
            ("finished", None if d.get("finished_at") is None else f"after {_took(d)}"),
            ("request", _request_text(d.get("request"))),
            ("reply", _reply_text(d.get("reply"))),
        ]
    )


def _request_text(req: Any) -> str | None:
    if not isinstance(req, dict):
        return None
    msg = (req.get("params") or {}).get("message") or {}
    return text_of({"message": msg}) or json.dumps(req.get("params"))


def _reply_text(reply: Any) -> str | None:
    if not isinstance(reply, dict):
        return None
    if "error" in reply:
        err = reply["error"]
        return f"error {err.get('code')}: {err.get('message')}"
    return text_of(reply.get("result")) or json.dumps(reply.get("result"))


def retry(args: argparse.Namespace, api: Api, out: Out) -> None:
    d = _resolve(api, args.key, args.ws) if args.ws else {"id": args.key}
    r = api.json("POST", f"/v1/deliveries/{d['id']}/retry")
    if out.as_json:
        out.json(r)
        return
    out.line(
        Text.assemble(f"delivery {r['id']} (message {r['message_id']}): ", status(r["status"]))
    )


def cancel(args: argparse.Namespace, api: Api, out: Out) -> None:
    d = _resolve(api, args.key, args.ws) if args.ws else {"id": args.key}
    r = api.json("POST", f"/v1/deliveries/{d['id']}/cancel")
    if out.as_json:
        out.json(r)
        return
    out.line(
        Text.assemble(f"delivery {r['id']} (message {r['message_id']}): ", status(r["status"]))
    )
