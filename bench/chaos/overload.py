"""Overload mode: callers send faster than the agents drain (see docs/reliability.md).

Every workspace gets a queue limit (`max_queue`, `max_queue_age`); every message makes the
agent work a while, so the queues fill and berth must refuse. While it runs, a sampler
reads each workspace's queue depth and age from the API (`"type": "queue"` records).
The checker then adds two violations to the usual ones:

- `unbounded`: a sampled queue deeper than its limit plus the admission tolerance
  (admission reads the queue at most every 0.25 s and counts this replica's accepts in
  between, so accepts racing each other may pass a limit by a few);
- `unclear_refusal`: a 429 without `Retry-After`, or without the reason `queue_full`.

Refused messages are not losses: a caller that was refused every time and gave up was
never accepted (the final read finds no delivery from before it), and is counted apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from typing import Any

import httpx

from bench.chaos.history import History

__all__ = ["check_queues", "sample", "summary_lines", "tolerance"]

SAMPLE_EVERY = 0.5


def tolerance(limit: int) -> int:
    return max(5, limit // 10)


async def sample(client: httpx.AsyncClient, history: History, stop: asyncio.Event) -> None:
    """Record every workspace's queue depth and age until `stop` is set."""
    while not stop.is_set():
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            r = await client.get("/v1/workspaces")
            for w in r.json()["workspaces"]:
                history.add(
                    {
                        "type": "queue",
                        "t": time.time(),
                        "ws": w["name"],
                        "depth": w.get("queue_depth", 0),
                        "in_flight": w.get("in_flight", 0),
                        "age": w.get("queue_age_seconds") or 0.0,
                        "max_queue": w.get("max_queue"),
                        "max_queue_age": w.get("max_queue_age"),
                    }
                )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)


def check_queues(records: list[dict[str, Any]], bad: Any, counts: Any) -> dict[str, Any]:
    """Queue bounds and refusal clarity; `bad(kind, ws, mid, detail)` records a violation.
    Returns per workspace the deepest and oldest queue seen, with its limits."""
    seen: dict[str, dict[str, Any]] = defaultdict(lambda: {"depth": 0, "age": 0.0})
    for r in records:
        if r.get("type") == "queue":
            s = seen[r["ws"]]
            s["limit"], s["limit_age"] = r.get("max_queue"), r.get("max_queue_age")
            if r["depth"] > s["depth"]:
                s["depth"] = r["depth"]
            s["age"] = max(s["age"], float(r["age"]))
            limit = r.get("max_queue")
            if limit is not None and r["depth"] > limit + tolerance(limit):
                bad("unbounded", r["ws"], "-", f"{r['depth']} queued, the limit is {limit}")
        elif r.get("type") == "call" and r.get("status_code") == 429:
            counts["refused (429)"] += 1
            if not r.get("retry_after") or r.get("reason") != "queue_full":
                bad(
                    "unclear_refusal",
                    r["ws"],
                    r["mid"],
                    f"429 with Retry-After {r.get('retry_after')!r}, reason {r.get('reason')!r}",
                )
    return dict(seen)


def summary_lines(queues: dict[str, dict[str, Any]], counts: Any) -> list[str]:
    if not queues:
        return []
    lines = [
        "",
        f"{'overload: queues sampled':<28}{'deepest':>10}{'limit':>8}{'oldest s':>10}{'limit':>8}",
    ]
    for ws, s in sorted(queues.items()):
        lines.append(
            f"  {ws:<26}{s['depth']:>10}{s.get('limit') or '-':>8}"
            f"{s['age']:>10.1f}{s.get('limit_age') or '-':>8}"
        )
    lines.append(f"  {'refusals (429)':<26}{counts['refused (429)']:>10}")
    lines.append(f"  {'callers gave up (refused)':<26}{counts['gave up refused']:>10}")
    return lines
