"""How long messages wait because of a deploy (replace) vs a stop-then-start restart.

    python bench/deploy.py [--rounds 3] [--callers 2] [--work 0.2]

One `berth serve` (SQLite, process runtime) and one echo workspace with restart_mode
replace and max_concurrency 1, under steady closed-loop load (`--callers` callers, each
message working `--work` s in the agent). Each round runs a stop-first restart, then a
replace deploy, with quiet seconds between. A message's wait is its send -> reply time
minus the longest such time in the quiet seconds before the operation (queueing behind the
other callers, not caused by the operation); the figure is the longest wait of any message
sent while the operation ran. Figures, not assertions (goal: deploy <= 10 % of restart).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._load import body as rpc_body  # noqa: E402
from tests.e2e.harness import ECHO, BerthServer  # noqa: E402

Sample = tuple[float, float]  # (sent at, seconds to the reply)


async def load(c: httpx.AsyncClient, work: float, out: list[Sample], stop: asyncio.Event) -> None:
    text = f"sleep:{work} x" if work else "x"
    while not stop.is_set():
        body = rpc_body(text)
        t0 = time.monotonic()
        r = await c.post("/v1/workspaces/bench/a2a", json=body, headers={"a2a-version": "1.0"})
        if r.status_code != 200 or "result" not in r.json():
            raise RuntimeError(f"a message failed: {r.status_code} {r.text[:200]}")
        out.append((t0, time.monotonic() - t0))


async def operate(c: httpx.AsyncClient, path: str, body: dict[str, Any]) -> tuple[float, float]:
    """Run one restart or deploy to its end; (started, ended) on the monotonic clock."""
    t0 = time.monotonic()
    r = await c.post(f"/v1/workspaces/bench/{path}", json=body)
    r.raise_for_status()
    rec = r.json()
    while rec["phase"] not in ("done", "failed"):
        await asyncio.sleep(0.05)
        rec = (await c.get(f"/v1/workspaces/bench/restarts/{rec['id']}")).json()
    if rec["phase"] != "done":
        raise RuntimeError(f"{path} failed: {rec.get('error')}")
    return t0, time.monotonic()


def longest_wait(samples: list[Sample], start: float, end: float, quiet: float) -> float:
    """The longest send -> reply time of a message sent during [start, end], beyond the
    quiet period's longest."""
    during = [d for t, d in samples if start - quiet <= t <= end]  # sent shortly before or during
    return max(0.0, max(during, default=0.0) - quiet)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--callers", type=int, default=2)
    ap.add_argument("--work", type=float, default=0.2, help="seconds each message works")
    ap.add_argument("--quiet", type=float, default=3.0, help="seconds between operations")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="berth-bench-deploy-") as tmp:
        server = BerthServer(Path(tmp) / "berth", env={"BERTH_FAST_LANE": "off"}).start()
        try:
            async with server.client() as c:
                spec = {
                    "name": "bench",
                    "command": ECHO,
                    "restart_mode": "replace",
                    "drain_seconds": 10,
                }
                (await c.post("/v1/workspaces", json=spec)).raise_for_status()
                while (await c.get("/v1/workspaces/bench")).json()["status"] != "online":
                    await asyncio.sleep(0.1)
                samples: list[Sample] = []
                stop = asyncio.Event()
                callers = [
                    asyncio.create_task(load(c, args.work, samples, stop))
                    for _ in range(args.callers)
                ]
                windows: list[tuple[float, float, float, float, float, float]] = []
                for n in range(args.rounds):
                    await asyncio.sleep(args.quiet)
                    quiet = max((d for t, d in samples if t >= time.monotonic() - args.quiet))
                    s, e = await operate(c, "restart", {"mode": "stop-first"})
                    await asyncio.sleep(args.quiet)
                    quiet2 = max((d for t, d in samples if t >= time.monotonic() - args.quiet))
                    s2, e2 = await operate(c, "deploy", {"env": {"ROUND": str(n)}})
                    windows.append((s, e, quiet, s2, e2, quiet2))
                    print(f"round {n + 1} ran", flush=True)
                await asyncio.sleep(args.quiet)
                stop.set()
                await asyncio.gather(*callers)
                # every message sent during an operation has its reply now
                rows = []
                for n, (s, e, quiet, s2, e2, quiet2) in enumerate(windows):
                    restart = longest_wait(samples, s, e, quiet)
                    deploy = longest_wait(samples, s2, e2, quiet2)
                    rows.append((restart, e - s, deploy, e2 - s2))
                    print(
                        f"round {n + 1}: stop-first restart: longest extra wait {restart:.3f} s "
                        f"(restart took {e - s:.2f} s) | replace deploy: longest extra wait "
                        f"{deploy:.3f} s (deploy took {e2 - s2:.2f} s) | "
                        f"quiet longest {quiet:.3f}/{quiet2:.3f} s"
                    )
        finally:
            server.stop()
    r_med = statistics.median(r[0] for r in rows)
    d_med = statistics.median(r[2] for r in rows)
    print(
        f"\n{len(samples)} messages, {args.callers} callers, {args.work:g} s of work each, "
        f"max_concurrency 1, nothing failed"
    )
    print(f"longest extra wait, median of {len(rows)} rounds:")
    print(f"  stop-first restart  {r_med * 1000:7.0f} ms")
    print(
        f"  replace deploy      {d_med * 1000:7.0f} ms   ({d_med / r_med * 100:.1f} % of the restart's)"
    )


if __name__ == "__main__":
    asyncio.run(main())
