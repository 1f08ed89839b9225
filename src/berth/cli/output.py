"""Terminal output with rich: tables, key/value views, human times, and --json."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = ["Out", "ago", "drain_summary", "duration", "status", "table", "when"]

STATUS_STYLE = {
    "online": "green",
    "done": "green",
    "provisioning": "cyan",
    "draining": "yellow",
    "stopping": "yellow",
    "offline": "yellow",
    "queued": "cyan",
    "in_flight": "cyan",
    "paused": "magenta",
    "suspended": "dim",
    "failed": "bold red",
    "dead": "bold red",
    "canceled": "dim",
    "expired": "dim",
}


class Out:
    """Where a command writes: stdout for results, stderr for notes and errors."""

    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        tty = sys.stdout.isatty()
        # piped: no colours, and no wrapping at 80 columns (`berth ws ls | grep` sees whole rows)
        self.console = Console(highlight=False, width=None if tty else 10_000, soft_wrap=not tty)
        err_tty = sys.stderr.isatty()
        self.err = Console(
            stderr=True, highlight=False, width=None if err_tty else 10_000, soft_wrap=not err_tty
        )

    @property
    def tty(self) -> bool:
        return self.console.is_terminal

    def json(self, obj: Any, *, lines: bool = False) -> None:
        text = json.dumps(obj) if lines else json.dumps(obj, indent=2)
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def line(self, text: RenderableType = "") -> None:
        if isinstance(text, str):
            text = Text(text)  # data, not markup: `[x]` and `:name:` print as they are
        if self.tty:
            self.console.print(text)
            return
        with self.console.capture() as cap:  # piped: no padding at the ends of lines
            self.console.print(text)
        sys.stdout.write("".join(x.rstrip() + "\n" for x in cap.get().splitlines()))
        sys.stdout.flush()

    def note(self, text: str | Text) -> None:
        self.err.print(Text(text) if isinstance(text, str) else text)

    def table(self, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        self.line(table(columns, rows))

    def fields(self, pairs: Iterable[tuple[str, Any]]) -> None:
        """A two-column view of one object: `label  value`."""
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold")
        t.add_column()
        for k, v in pairs:
            if v is None or v == "" or v == []:
                continue
            t.add_row(k, v if isinstance(v, Text) else Text(str(v)))
        self.line(t)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    t = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    for c in columns:
        t.add_column(c.upper(), overflow="fold")
    for row in rows:
        t.add_row(*[v if isinstance(v, Text) else Text("-" if v is None else str(v)) for v in row])
    return t


def status(value: str) -> Text:
    return Text(value, style=STATUS_STYLE.get(value, ""))


def ago(ts: float | None, now: float | None = None) -> str:
    """`12 s ago`, `3 min ago`, `2 h ago`, `4 d ago`."""
    if ts is None:
        return "-"
    d = (time.time() if now is None else now) - ts
    if d < 0:
        return "in " + _span(-d)
    if d < 1:
        return "just now"
    return _span(d) + " ago"


def _span(d: float) -> str:
    if d < 60:
        return f"{int(d)} s"
    if d < 3600:
        return f"{int(d // 60)} min"
    if d < 86400:
        return f"{d / 3600:.1f} h".replace(".0 h", " h")
    return f"{int(d // 86400)} d"


def when(ts: float | None) -> str:
    """Local date and time, and how long ago: `2026-12-02 09:44:23 (3 min ago)`."""
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f" ({ago(ts)})"


def duration(seconds: float | None) -> str:
    """`0.412 s`, `12.3 s`, `2 min 5 s`."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.3f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(seconds), 60)
    return f"{m} min {s} s"


def drain_summary(rep: dict[str, Any] | None) -> str:
    if not rep:
        return "nothing was running"
    if rep.get("mode") == "skipped":
        return f"skipped ({rep.get('detail')})"
    done = "drained" if rep.get("drained") else "not drained in time"
    return (
        f"{done} by the {rep.get('mode')}: {len(rep.get('completed') or [])} completed, "
        f"{len(rep.get('unfinished') or [])} unfinished (requeued)"
    )
