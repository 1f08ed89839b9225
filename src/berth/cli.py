"""The `berth` command line (CONTRACT §9): serve, ws, send, deliveries."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any, NoReturn

import httpx

__all__ = ["main"]

DEMO_NAME = "demo-echo"


class CliError(Exception):
    pass


# --- talking to the server -------------------------------------------------------
class Api:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self._h = {"authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(timeout=httpx.Timeout(30.0, read=None))

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201, 202),
    ) -> httpx.Response:
        try:
            r = self._client.request(
                method, self.url + path, json=body, headers={**self._h, **(headers or {})}
            )
        except httpx.HTTPError as e:
            raise CliError(f"cannot reach berth at {self.url}: {e}") from None
        if r.status_code not in ok:
            try:
                err = r.json()["error"]
                raise CliError(f"{err['message']} ({err['code']}, HTTP {r.status_code})")
            except (ValueError, KeyError, TypeError):
                raise CliError(f"HTTP {r.status_code}: {r.text[:300]}") from None
        return r

    def json(self, method: str, path: str, body: Any = None) -> Any:
        return self.call(method, path, body).json()


def _api(args: argparse.Namespace) -> Api:
    url = args.server or os.environ.get("BERTH_SERVER") or "http://127.0.0.1:8080"
    token = args.token or os.environ.get("BERTH_ADMIN_TOKEN")
    if not token:
        path = Path(args.data_dir or os.environ.get("BERTH_DATA_DIR") or ".berth") / "admin_token"
        if path.exists():
            token = path.read_text().strip()
    if not token:
        raise CliError(
            "no admin token: set BERTH_ADMIN_TOKEN, pass --token, or run in the folder whose "
            ".berth/admin_token berth created"
        )
    return Api(url, token)


# --- rendering ------------------------------------------------------------------
def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]

    def line(vals: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)).rstrip()

    return "\n".join([line([c.upper() for c in cols])] + [line(r) for r in cells])


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and v > 1e9:
        return time.strftime("%H:%M:%S", time.localtime(v))
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


# --- commands -------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> None:
    from berth.server import serve

    serve(args)


def cmd_ws_create(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name, "runtime": args.runtime}
    command = list(args.command)
    if command:
        body["command"] = command
    for key in (
        "image",
        "url",
        "max_concurrency",
        "drain_seconds",
        "restart_policy",
        "memory",
        "cpus",
        "card",
    ):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    if args.env:
        body["env"] = dict(_kv(e) for e in args.env)
    ws = _api(args).json("POST", "/v1/workspaces", body)
    if args.json:
        _print(ws)
        return
    print(f"created {ws['name']} ({ws['id']}), {ws['status']}")
    print(f"workspace token (shown once): {ws['token']}")


def cmd_ws_ls(args: argparse.Namespace) -> None:
    rows = _api(args).json("GET", "/v1/workspaces")["workspaces"]
    if args.json:
        _print(rows)
        return
    print(
        _table(
            rows, ["name", "runtime", "status", "queue_depth", "in_flight", "restart_count", "url"]
        )
    )


def cmd_ws_show(args: argparse.Namespace) -> None:
    _print(_api(args).json("GET", f"/v1/workspaces/{args.ref}"))


def cmd_ws_restart(args: argparse.Namespace) -> None:
    api = _api(args)
    body = {
        k: v
        for k, v in {"drain_seconds": args.drain_seconds, "reason": args.reason}.items()
        if v is not None
    }
    r = api.json("POST", f"/v1/workspaces/{args.ref}/restart", body)
    print(f"restart {r['id']}" + (" (joined the one already running)" if r.get("joined") else ""))
    if args.no_follow:
        return
    seen = 0
    while True:
        r = api.json("GET", f"/v1/workspaces/{args.ref}/restarts/{r['id']}")
        for p in r["phases"][seen:]:
            print(f"  {p['phase']:<10} {p.get('detail') or ''}")
        seen = len(r["phases"])
        if r["phase"] in ("done", "failed"):
            break
        time.sleep(0.2)
    for p in r["phases"]:
        if p["seconds"] is not None:
            print(f"  {p['phase']:<10} {p['seconds']:.3f} s")
    rep = r.get("drain_report")
    if rep:
        print(
            f"drain ({rep['mode']}): drained={rep['drained']} completed={rep['completed']} "
            f"unfinished={rep['unfinished']}"
        )
    if r["phase"] == "failed":
        raise CliError(f"restart failed: {r['error']}")
    print(f"restart done in {r['seconds']:.2f} s")


def cmd_ws_simple(action: str) -> Any:
    def run(args: argparse.Namespace) -> None:
        api = _api(args)
        if action == "rm":
            out = api.json("DELETE", f"/v1/workspaces/{args.ref}")
            print(
                f"removed {out['workspace']['name']}; canceled {len(out['canceled'])} pending deliveries"
            )
            for d in out["canceled"]:
                print(f"  canceled {d['id']} (message {d['message_id']})")
            return
        out = api.json("POST", f"/v1/workspaces/{args.ref}/{action}")
        print(f"{out['workspace']['name']}: {out['workspace']['status']}")
        if out.get("drain_report"):
            print(f"drain: {out['drain_report']}")

    return run


def cmd_ws_logs(args: argparse.Namespace) -> None:
    api = _api(args)
    text = api.call("GET", f"/v1/workspaces/{args.ref}/logs?tail={args.tail}").text
    sys.stdout.write(text)
    while args.follow:
        time.sleep(1)
        new = api.call("GET", f"/v1/workspaces/{args.ref}/logs?tail={args.tail}").text
        if new != text:
            old_lines = text.splitlines()
            for line in (
                new.splitlines()[len(old_lines) :]
                if new.startswith(text[:200])
                else new.splitlines()
            ):
                print(line)
            text = new


def cmd_send(args: argparse.Namespace) -> None:
    api = _api(args)
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
        f"/v1/workspaces/{args.ref}/a2a",
        body,
        headers={"a2a-version": "1.0", "x-berth-wait": str(args.wait)},
    )
    if r.status_code == 202:
        print(f"accepted, still delivering: {r.json()['status_url']}")
        return
    doc = r.json()
    if args.json:
        _print(doc)
        return
    if "error" in doc:
        raise CliError(f"agent error {doc['error'].get('code')}: {doc['error'].get('message')}")
    print(_text_of(doc.get("result", {})) or json.dumps(doc["result"]))


def _text_of(result: dict[str, Any]) -> str:
    msg = result.get("message") or result
    parts = msg.get("parts") or []
    texts = [str(p["text"]) for p in parts if isinstance(p, dict) and p.get("text")]
    if not texts and "task" in result:
        for a in result["task"].get("artifacts") or []:
            texts += [str(p["text"]) for p in a.get("parts") or [] if p.get("text")]
    return "\n".join(texts)


def cmd_deliveries(args: argparse.Namespace) -> None:
    q = f"?limit={args.limit}" + (f"&status={args.status}" if args.status else "")
    rows = _api(args).json("GET", f"/v1/workspaces/{args.ref}/deliveries{q}")["deliveries"]
    if args.json:
        _print(rows)
        return
    print(
        _table(rows, ["id", "message_id", "status", "attempts", "forwards", "created_at", "reason"])
    )


def _kv(s: str) -> tuple[str, str]:
    k, sep, v = s.partition("=")
    if not sep:
        raise CliError(f"--env takes KEY=VALUE, not {s!r}")
    return k, v


# --- the parser -----------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server", help="berth's URL (env BERTH_SERVER; default http://127.0.0.1:8080)"
    )
    common.add_argument(
        "--token", help="admin token (env BERTH_ADMIN_TOKEN; default: <data dir>/admin_token)"
    )
    common.add_argument(
        "--data-dir", help="where to find admin_token (env BERTH_DATA_DIR; default .berth)"
    )
    common.add_argument("--json", action="store_true", help="print JSON")

    p = argparse.ArgumentParser(
        prog="berth", description="A control plane for A2A agent workspaces."
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the berth server")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--data-dir")
    s.add_argument("--database-url")
    s.add_argument("--redis-url")
    s.add_argument("--admin-token")
    s.add_argument("--public-url", help="the URL agents use to reach berth")
    s.add_argument(
        "--demo", action="store_true", help=f"create an echo workspace named {DEMO_NAME}"
    )
    s.add_argument("--log-level")
    s.set_defaults(fn=cmd_serve)

    ws = sub.add_parser("ws", help="manage workspaces").add_subparsers(dest="ws_cmd", required=True)
    c = ws.add_parser("create", parents=[common], help="create and start a workspace")
    c.add_argument("name")
    c.add_argument("command", nargs="*", help="after --: the agent's argv (process runtime)")
    c.add_argument("--runtime", default="process", choices=["process", "docker", "external"])
    c.add_argument("--image")
    c.add_argument("--url")
    c.add_argument("--env", action="append", metavar="KEY=VALUE")
    c.add_argument("--max-concurrency", type=int)
    c.add_argument("--drain-seconds", type=float)
    c.add_argument("--restart-policy", choices=["on-failure", "always", "never"])
    c.add_argument("--memory")
    c.add_argument("--cpus", type=float)
    c.add_argument(
        "--card",
        choices=["public", "callers"],
        help="who may read the agent card without a token (default: callers)",
    )
    c.set_defaults(fn=cmd_ws_create)
    ws.add_parser("ls", parents=[common], help="list workspaces").set_defaults(fn=cmd_ws_ls)
    for name, fn, text in (
        ("show", cmd_ws_show, "show one workspace"),
        ("pause", cmd_ws_simple("pause"), "drain and stop; messages wait"),
        ("resume", cmd_ws_simple("resume"), "start again and deliver"),
        ("rm", cmd_ws_simple("rm"), "stop and remove"),
    ):
        x = ws.add_parser(name, parents=[common], help=text)
        x.add_argument("ref")
        x.set_defaults(fn=fn)
    r = ws.add_parser("restart", parents=[common], help="restart with drain, showing live phases")
    r.add_argument("ref")
    r.add_argument("--drain-seconds", type=float)
    r.add_argument("--reason")
    r.add_argument("--no-follow", action="store_true")
    r.set_defaults(fn=cmd_ws_restart)
    lg = ws.add_parser("logs", parents=[common], help="the workspace's log")
    lg.add_argument("ref")
    lg.add_argument("--tail", type=int, default=200)
    lg.add_argument("-f", "--follow", action="store_true")
    lg.set_defaults(fn=cmd_ws_logs)

    sd = sub.add_parser("send", parents=[common], help="send a text message and print the reply")
    sd.add_argument("ref")
    sd.add_argument("text")
    sd.add_argument("--message-id")
    sd.add_argument("--wait", type=float, default=300)
    sd.set_defaults(fn=cmd_send)

    dl = sub.add_parser("deliveries", parents=[common], help="a workspace's delivery log")
    dl.add_argument("ref")
    dl.add_argument(
        "--status", choices=["queued", "in_flight", "done", "dead", "canceled", "expired"]
    )
    dl.add_argument("--limit", type=int, default=50)
    dl.set_defaults(fn=cmd_deliveries)
    return p


def main(argv: list[str] | None = None) -> NoReturn:
    argv = list(sys.argv[1:] if argv is None else argv)
    tail: list[str] = []
    if "--" in argv:  # everything after -- is the agent's own argv, options included
        at = argv.index("--")
        argv, tail = argv[:at], argv[at + 1 :]
    args = parser().parse_args(argv)
    if tail:
        if not hasattr(args, "command"):
            print("berth: '--' is only for `berth ws create NAME -- argv…`", file=sys.stderr)
            sys.exit(2)
        args.command = list(args.command) + tail
    try:
        args.fn(args)
    except CliError as e:
        print(f"berth: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)
