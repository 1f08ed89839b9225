"""The command line's grammar: every option with its help, default and BERTH_* variable."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from berth import __version__
from berth.cli.errors import EXIT_HELP
from berth.settings import ClientSettings, Settings, env_name

__all__ = ["DELIVERY_COMMANDS", "build"]

DELIVERY_COMMANDS = ("ls", "show", "retry", "cancel")
STATUSES = ["queued", "in_flight", "done", "dead", "canceled", "expired"]
RAW = argparse.RawDescriptionHelpFormatter

_SERVE_HELP: dict[str, tuple[str, str | None]] = {  # option: (help, shown default or None)
    "host": ("interface to listen on", None),
    "port": ("port to listen on", None),
    "data_dir": ("the database, admin token and workspaces of this berth (one server each)", None),
    "database_url": ("sqlite:///PATH or postgresql://…", "SQLite in the data dir"),
    "redis_url": ("redis://… to coordinate several replicas", "none: one replica"),
    "admin_token": ("the operator's bearer token", "generated into <data dir>/admin_token"),
    "public_url": ("the URL agents use to reach berth", "http://HOST:PORT"),
    "log_level": ("debug, info, warning or error", None),
    "log_format": ("text, or json: one JSON object per line", None),
}


def _default(cls: Any, name: str) -> Any:
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


def _client_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection")
    server = _default(ClientSettings, "server")
    g.add_argument("--server", help=f"berth's URL (default {server}; env {env_name('server')})")
    g.add_argument(
        "--token",
        help="the admin token (default: <data dir>/admin_token; env BERTH_ADMIN_TOKEN)",
    )
    g.add_argument(
        "--data-dir",
        help=f"where to find admin_token (default {_default(ClientSettings, 'data_dir')}; "
        "env BERTH_DATA_DIR)",
    )
    g.add_argument("--json", action="store_true", help="print JSON instead of text")
    return common


def _settings_epilog() -> str:
    shown = {"extra", "demo", *_SERVE_HELP}
    lines = ["every other setting is an environment variable (default):"]
    for f in dataclasses.fields(Settings):
        if f.name not in shown:
            default = "(unset)" if f.default is None else f.default
            lines.append(f"  {env_name(f.name):<28} {default}")
    return "\n".join(lines)


def _serve(sub: Any) -> None:
    s = sub.add_parser(
        "serve", help="run the berth server", epilog=_settings_epilog(), formatter_class=RAW
    )
    for name, (text, shown) in _SERVE_HELP.items():
        default = shown if shown is not None else _default(Settings, name)
        kw: dict[str, Any] = {"type": int} if name == "port" else {}
        if name in ("log_level", "log_format"):
            kw["choices"] = (
                ["debug", "info", "warning", "error"] if name == "log_level" else ["text", "json"]
            )
        s.add_argument(
            "--" + name.replace("_", "-"),
            help=f"{text} (default {default}; env {env_name(name)})",
            **kw,
        )
    s.add_argument(
        "--demo",
        action="store_true",
        help="also create the echo workspace demo-echo (env BERTH_DEMO=1)",
    )
    s.add_argument("--json", action="store_true", help="the same as --log-format json")
    s.set_defaults(fn="serve")


def _ws(sub: Any, common: argparse.ArgumentParser) -> None:
    ws = sub.add_parser("ws", help="manage workspaces").add_subparsers(
        dest="ws_cmd", required=True, metavar="COMMAND"
    )
    c = ws.add_parser(
        "create",
        parents=[common],
        help="create and start a workspace",
        formatter_class=RAW,
        description="Create a workspace and wait until it is online (or failed: exit 1).\n"
        "For the process runtime, the agent's argv follows `--`; relative paths in it are\n"
        "made absolute against this folder (the agent runs in its own state directory).",
    )
    c.add_argument("name", help="lowercase letters, digits and '-'")
    c.add_argument("command", nargs="*", help="after --: the agent's argv (process runtime)")
    c.add_argument(
        "--runtime",
        default="process",
        choices=["process", "docker", "external"],
        help="where the agent runs (default process)",
    )
    c.add_argument("--image", help="container image (docker runtime)")
    c.add_argument("--url", help="the agent's URL (external runtime; optional, it registers)")
    c.add_argument(
        "--env", action="append", metavar="KEY=VALUE", help="environment for the agent (repeatable)"
    )
    c.add_argument("--max-concurrency", type=int, metavar="N", help="messages at once (default 1)")
    c.add_argument(
        "--drain-seconds", type=float, metavar="S", help="drain window on restart (default 30)"
    )
    c.add_argument(
        "--restart-policy",
        choices=["on-failure", "always", "never"],
        help="after a crash (default on-failure)",
    )
    c.add_argument("--memory", help="memory limit, e.g. 512m (docker)")
    c.add_argument("--cpus", type=float, metavar="N", help="CPU limit (docker)")
    c.add_argument(
        "--max-queue",
        type=int,
        metavar="N",
        help="refuse new messages (429) while N are queued (default BERTH_MAX_QUEUE, 10000)",
    )
    c.add_argument(
        "--max-queue-age",
        type=float,
        metavar="S",
        help="refuse new messages while the oldest queued one waited S s; 0: no limit "
        "(default BERTH_MAX_QUEUE_AGE, 3600)",
    )
    c.add_argument(
        "--card",
        choices=["public", "callers"],
        help="who may read the agent card without a token (default callers)",
    )
    c.add_argument(
        "--idle-suspend",
        type=float,
        metavar="S",
        dest="idle_suspend_seconds",
        help="suspend after S s without messages; a message wakes it (default: never)",
    )
    c.add_argument(
        "--restart-mode",
        choices=["stop-first", "replace"],
        help="how restarts and deploys run by default: stop-first (the agent never runs "
        "twice at once) or replace (start the new one beside it first); default stop-first",
    )
    c.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="S",
        help="wait this long for it to come online; 0: do not wait (default 60)",
    )
    c.add_argument(
        "--allow",
        action="append",
        metavar="CALLER",
        help="who besides the operator may call it: a workspace, caller:NAME or '*' (repeatable)",
    )
    c.set_defaults(fn="workspaces.create")
    for action, text in (("allow", "let callers call"), ("deny", "stop callers calling")):
        g = ws.add_parser(action, parents=[common], help=f"{text} a workspace")
        g.add_argument("ref", metavar="NAME", help="the workspace called")
        g.add_argument(
            "--from",
            dest="callers",
            action="append",
            required=True,
            metavar="CALLER",
            help="a workspace name, caller:NAME or '*' (repeatable)",
        )
        g.set_defaults(fn=f"access.{action}")

    ws.add_parser("ls", parents=[common], help="list workspaces").set_defaults(fn="workspaces.ls")
    for name, fn, text in (
        ("show", "workspaces.show", "show one workspace"),
        ("pause", "workspaces.pause", "drain and stop; messages are held"),
        ("rm", "workspaces.rm", "stop and remove; pending messages are canceled"),
    ):
        x = ws.add_parser(name, parents=[common], help=text)
        x.add_argument("ref", metavar="NAME", help="workspace name or id")
        x.set_defaults(fn=fn)
    for name, text in (
        ("restart", "restart with drain, showing the phases live"),
        ("resume", "start a paused workspace and deliver what waited"),
    ):
        r = ws.add_parser(name, parents=[common], help=text)
        r.add_argument("ref", metavar="NAME", help="workspace name or id")
        r.add_argument("--no-follow", action="store_true", help="do not wait for the restart")
        r.add_argument(
            "--wait",
            type=float,
            default=600.0,
            metavar="S",
            help="give up following after S seconds: exit 6 (default 600)",
        )
        if name == "restart":
            r.add_argument(
                "--drain-seconds",
                type=float,
                metavar="S",
                help="drain window (default: the workspace's)",
            )
            r.add_argument("--reason", help="recorded with the restart")
            r.add_argument("--mode", choices=["stop-first", "replace"], help=_MODE)
            r.set_defaults(fn="restarts.restart")
        else:
            r.set_defaults(fn="workspaces.resume")
    d = ws.add_parser(
        "deploy",
        parents=[common],
        help="deploy a new version: start it beside the running one, switch, stop the old",
    )
    d.add_argument("ref", metavar="NAME", help="workspace name or id")
    d.add_argument("command", nargs="*", help="after --: the new argv (process runtime)")
    d.add_argument("--image", help="the new image (docker runtime)")
    d.add_argument(
        "--env", action="append", metavar="KEY=VALUE", help="set in the agent's env (repeatable)"
    )
    d.add_argument("--mode", choices=["stop-first", "replace"], help=_MODE)
    d.add_argument(
        "--restart-mode", choices=["stop-first", "replace"], help="the spec's new default mode"
    )
    d.add_argument(
        "--canary",
        type=_percent,
        metavar="P%",
        help="send P %% of new messages to the new version for a window, then promote it "
        "or roll back on both versions' failure rates",
    )
    d.add_argument(
        "--canary-seconds", type=float, metavar="S", help="the canary's window (default 60)"
    )
    hand = d.add_mutually_exclusive_group()
    hand.add_argument("--promote", action="store_true", help="promote the running canary now")
    hand.add_argument("--rollback", action="store_true", help="roll the running canary back")
    d.add_argument("--drain-seconds", type=float, metavar="S", help="the old version's drain")
    d.add_argument("--reason", help="recorded with the deploy")
    d.add_argument("--no-follow", action="store_true", help="do not wait for the deploy")
    d.add_argument("--wait", type=float, default=600.0, metavar="S", help="follow for S s")
    d.set_defaults(fn="deploys.deploy")
    rs = ws.add_parser("restarts", parents=[common], help="a workspace's restart history")
    rs.add_argument("ref", metavar="NAME", help="workspace name or id")
    rs.add_argument("id", nargs="?", help="one restart: its phases and drain report")
    rs.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    rs.set_defaults(fn="restarts.restarts")
    lg = ws.add_parser("logs", parents=[common], help="the workspace's log")
    lg.add_argument("ref", metavar="NAME", help="workspace name or id")
    lg.add_argument("--tail", type=int, default=200, help="lines (default 200)")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    lg.set_defaults(fn="workspaces.logs")


def _deliveries(sub: Any, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser(
        "deliveries",
        help="the delivery log: ls, show, retry, cancel",
        formatter_class=RAW,
        description="`berth deliveries NAME` is `berth deliveries ls NAME`.\n"
        "FORWARDS counts the times berth sent a message to its agent; FAILURES the forwards\n"
        "that failed and count toward the dead-letter limit (BERTH_MAX_ATTEMPTS).",
    ).add_subparsers(dest="d_cmd", required=True, metavar="COMMAND")
    ls = d.add_parser("ls", parents=[common], help="a workspace's deliveries")
    ls.add_argument("ref", metavar="NAME", help="workspace name or id")
    ls.add_argument("--status", choices=STATUSES, help="only these")
    ls.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    ls.set_defaults(fn="messages.deliveries")
    for name, text in (
        ("show", "one delivery with its request and reply"),
        ("retry", "queue a dead, canceled or expired delivery again"),
        ("cancel", "cancel a delivery still waiting in the queue"),
    ):
        x = d.add_parser(name, parents=[common], help=text)
        x.add_argument("key", metavar="ID", help="delivery id (or messageId, with --ws)")
        x.add_argument("-w", "--ws", metavar="NAME", help="look ID up as a messageId of NAME")
        x.set_defaults(fn=f"messages.{name}")


def _creds(sub: Any, common: argparse.ArgumentParser) -> None:
    creds = sub.add_parser(
        "creds", help="caller and agent credentials: ls, create, rotate, revoke"
    ).add_subparsers(dest="creds_cmd", required=True, metavar="COMMAND")
    creds.add_parser("ls", parents=[common], help="list (never the secrets)").set_defaults(
        fn="access.creds_ls"
    )
    c = creds.add_parser("create", parents=[common], help="a named caller credential")
    c.add_argument("name", nargs="?", help="the caller's name: caller:NAME")
    c.add_argument("--agent", metavar="WORKSPACE", help="an external workspace's agent credential")
    c.set_defaults(fn="access.creds_create")
    for name, text in (
        ("rotate", "a new secret (shown once); the old one stops working"),
        ("revoke", "refuse this credential from now on"),
    ):
        x = creds.add_parser(name, parents=[common], help=text)
        x.add_argument("ref", help="id or subject (workspace:NAME, caller:NAME, agent:NAME)")
        x.set_defaults(fn=f"access.creds_{name}")


def build() -> argparse.ArgumentParser:
    common = _client_options()
    p = argparse.ArgumentParser(
        prog="berth",
        description="A control plane for A2A agent workspaces that never loses a message.",
        epilog=EXIT_HELP,
        formatter_class=RAW,
    )
    p.add_argument("-V", "--version", action="version", version=f"berth {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    _serve(sub)
    _ws(sub, common)
    sd = sub.add_parser("send", parents=[common], help="send a text message and print the reply")
    sd.add_argument("ref", metavar="NAME", help="workspace name or id")
    sd.add_argument("text")
    sd.add_argument("--message-id", help="the A2A messageId (default: a new UUID)")
    sd.add_argument(
        "--wait",
        type=float,
        default=300.0,
        metavar="S",
        help="wait S seconds for the reply, then exit 6 (it is still delivered); "
        "0: return at once (default 300)",
    )
    sd.set_defaults(fn="messages.send")
    _deliveries(sub, common)
    _creds(sub, common)
    ev = sub.add_parser("events", parents=[common], help="recent events; -f follows them live")
    ev.add_argument("-f", "--follow", action="store_true", help="keep printing events as they come")
    ev.add_argument("-w", "--ws", metavar="NAME", help="only this workspace's events")
    ev.add_argument(
        "--limit", type=int, default=50, help="recent events first (default 50; 0: none)"
    )
    ev.set_defaults(fn="watch.events")
    tp = sub.add_parser("top", parents=[common], help="workspaces and queues, live")
    tp.add_argument(
        "--interval", type=float, default=1.0, help="seconds between updates (default 1)"
    )
    tp.add_argument("--once", action="store_true", help="print once (also when not a terminal)")
    tp.set_defaults(fn="watch.top")
    return p


_MODE = (
    "replace: start the new agent beside the old one first; stop-first: stop, then start "
    "(default: the workspace's restart mode)"
)


def _percent(s: str) -> int:
    try:
        return int(s.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a percent like 10 or 10%, not {s!r}") from None
