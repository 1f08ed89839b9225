"""The `berth` command line: serve, ws, send, deliveries, events, top."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from berth.cli.errors import CliError, Exit
from berth.cli.parser import DELIVERY_COMMANDS, build

if TYPE_CHECKING:
    from berth.cli.output import Out

__all__ = ["main"]


def main(argv: list[str] | None = None) -> NoReturn:
    argv = list(sys.argv[1:] if argv is None else argv)
    tail: list[str] = []
    if "--" in argv:  # everything after -- is the agent's own argv, options included
        at = argv.index("--")
        argv, tail = argv[:at], argv[at + 1 :]
    if (
        len(argv) > 1
        and argv[0] == "deliveries"
        and argv[1] not in (*DELIVERY_COMMANDS, "-h", "--help")
    ):
        argv.insert(1, "ls")  # `berth deliveries NAME` lists
    args = build().parse_args(argv)
    if tail:
        if not hasattr(args, "command"):
            print("berth: '--' is only for `berth ws create NAME -- argv…`", file=sys.stderr)
            sys.exit(Exit.USAGE)
        args.command = list(args.command) + tail
    if args.fn == "serve":  # no terminal rendering to load: a refusal comes at once
        sys.exit(_serve(args))
    from berth.cli.output import Out

    out = Out(as_json=bool(args.json))
    try:
        code = run(args, out)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`berth … | head`): stop quietly, as a shell tool does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = Exit.OK
    sys.exit(code)


def run(args: argparse.Namespace, out: Out) -> int:
    from rich.text import Text

    try:
        module, fn = args.fn.split(".")
        command = getattr(importlib.import_module(f"berth.cli.{module}"), fn)
        from berth.cli.client import connect

        command(args, connect(args), out)
    except CliError as e:
        out.note(Text.assemble(("berth:", "bold red"), " ", e.message))
        if e.hint:
            out.note(Text("hint: " + e.hint, style="dim"))
        return int(e.code)
    except KeyboardInterrupt:
        return int(Exit.INTERRUPTED)
    return int(Exit.OK)


def _serve(args: argparse.Namespace) -> int:
    from berth.server import DataDirInUse, serve

    if args.json:
        args.log_format = "json"
    try:
        serve(args)
    except DataDirInUse as e:
        print(f"berth: {e}", file=sys.stderr)
        return int(Exit.FAILED)
    return int(Exit.OK)
