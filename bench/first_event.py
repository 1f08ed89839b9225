"""Time to first event of a stream, through berth vs straight to the same echo agent.

    python bench/first_event.py [--n 200] [--rounds 2] [--database-url postgresql://…]
    python bench/first_event.py --trivial [--n 300] [--rounds 2] [--ref-src DIR] [--lane]

Each request is `SendStreamingMessage` of `task sleep:0.2 …`: the echo agent sends its
first event (the task, `working`) at once and the last after 0.2 s, so the first-event
time measures the stream path (accept into the delivery log, claim, forward, pipe) and
not the work. One request at a time (sequential), then 8 at once, each level in
`--rounds` rounds alternating three targets: a separately started echo agent ("direct"),
the very agent process berth started for its workspace, called straight at its URL
("berth's agent"), and that workspace through berth. The last two differ by berth alone;
the first two by how the agent was started. Figures, not assertions.

`--trivial`: the same against bench/_trivial.py's agent instead of the echo agent (its
first event at once, its last 50 ms later, no a2a-sdk), as an external workspace: the
echo agent's own 9 ms and its long tail no longer blur berth's share, which is the
difference of "via berth" and "direct" there. `--ref-src DIR` adds a second berth
imported from another checkout's `src/` (the code before a change), in the same rounds.
`--lane` adds a berth with its fast lane (`BERTH_FAST_LANE=on`), which relays streams to
berth's Python server: what that hop costs a stream's first event.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from proxy import (  # noqa: E402
    ADMIN,
    Databases,
    Procs,
    echo_via_berth,
    free_port,
    start_berth,
    start_echo,
)
from proxy import workspace as external_workspace  # noqa: E402


def _body() -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendStreamingMessage",
        "params": {
            "message": {
                "role": "ROLE_USER",
                "messageId": str(uuid.uuid4()),
                "parts": [{"text": "task sleep:0.2 bench"}],
            }
        },
    }


async def _one(s: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(seconds to the first SSE event, seconds to the end of the stream)."""
    t0 = time.perf_counter()
    first = 0.0
    async with s.post(url, json=_body()) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if line.startswith(b"data: ") and not first:
                first = time.perf_counter() - t0
    return first, time.perf_counter() - t0


async def measure(
    url: str, n: int, concurrency: int, headers: dict[str, str]
) -> tuple[list[float], list[float]]:
    async with aiohttp.ClientSession(
        headers={**headers, "a2a-version": "1.0"},
        connector=aiohttp.TCPConnector(limit=concurrency * 2),
    ) as s:
        for _ in range(5):  # warm up connections and code paths
            await _one(s, url)
        firsts: list[float] = []
        totals: list[float] = []
        todo = iter(range(n))

        async def worker() -> None:
            for _ in todo:
                f, t = await _one(s, url)
                firsts.append(f)
                totals.append(t)

        await asyncio.gather(*[worker() for _ in range(concurrency)])
        return firsts, totals


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] * 1000


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--database-url")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--trivial", action="store_true")
    ap.add_argument("--ref-src", help="with --trivial: also a berth from this src/")
    ap.add_argument(
        "--lane", action="store_true", help="with --trivial: also a berth with its fast lane"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        procs = Procs()
        dbs = Databases(args.database_url)
        try:
            if args.trivial:
                await trivial(args, tmp, procs, dbs)
                return
            direct = start_echo(procs, tmp)
            via = await echo_via_berth(procs, tmp, dbs)
            store = "postgresql" if args.database_url else "sqlite"
            print(
                f"# time to first stream event: store {store}, {args.n} streams per row, agent works 0.2 s"
            )
            berth, name = via.split("/v1/workspaces/")
            async with httpx.AsyncClient() as h:
                r = await h.get(
                    f"{berth}/v1/workspaces/{name.split('/')[0]}",
                    headers={"authorization": f"Bearer {ADMIN}"},
                )
                own = r.json()["url"]
            targets = [
                ("direct to echo", direct, {}),
                ("berth's agent", own, {}),
                ("via berth", via, {"authorization": f"Bearer {ADMIN}"}),
            ]
            for c in (1, 8):
                got: dict[str, list[float]] = {label: [] for label, _, _ in targets}
                for _ in range(args.rounds):
                    for label, url, headers in targets:
                        firsts, _totals = await measure(url, args.n, c, headers)
                        got[label] += firsts
                for label, f in got.items():
                    print(
                        f"{label:<16} c={c:<2} first event p50 {pct(f, 50):6.2f} ms  "
                        f"p99 {pct(f, 99):7.2f} ms  mean {statistics.mean(f) * 1000:6.2f} ms"
                    )
                b = got["via berth"]
                for label in ("direct to echo", "berth's agent"):
                    print(
                        f"{'':<16} added by berth over {label}: p50 "
                        f"{pct(b, 50) - pct(got[label], 50):+.2f} ms, mean "
                        f"{(statistics.mean(b) - statistics.mean(got[label])) * 1000:+.2f} ms"
                    )
        finally:
            procs.stop()
            await dbs.drop_all()


async def trivial(args: argparse.Namespace, tmp: Path, procs: Procs, dbs: Databases) -> None:
    port = free_port()
    agent = f"http://127.0.0.1:{port}/"
    procs.start([sys.executable, str(HERE / "_trivial.py"), "agent", "--port", str(port)], agent)
    spec = {"runtime": "external", "url": agent, "max_concurrency": 64}
    auth = {"authorization": f"Bearer {ADMIN}"}
    targets: list[tuple[str, str, dict[str, str]]] = [("direct", agent, {})]
    for label, src in [("via berth", None), ("ref berth", args.ref_src), ("lane berth", None)]:
        if (label == "ref berth" and not src) or (label == "lane berth" and not args.lane):
            continue
        extra = await dbs.fresh()  # a database of its own (see proxy.Databases)
        env = {**extra, "PYTHONPATH": src} if src else extra
        if label == "lane berth":  # streams are relayed by the lane to berth's Python server
            env = {**env, "BERTH_FAST_LANE": "on"}
        berth, _ = start_berth(procs, tmp / label.replace(" ", "-"), **env)
        via = external_workspace(berth, f"trivial-sse-{len(targets)}-{os.getpid()}", **spec)
        targets.append((label, via, auth))
    store = "postgresql" if args.database_url else "sqlite"
    print(f"# time to first stream event, trivial agent: store {store}, {args.n} per row")
    for c in (1, 8):
        got: dict[str, list[float]] = {label: [] for label, _, _ in targets}
        for _ in range(args.rounds):
            for label, url, headers in targets:
                got[label] += (await measure(url, args.n, c, headers))[0]
        for label, f in got.items():
            print(
                f"{label:<10} c={c:<2} first event p50 {pct(f, 50):6.2f} ms  "
                f"p99 {pct(f, 99):7.2f} ms  mean {statistics.mean(f) * 1000:6.2f} ms"
            )
        d = got["direct"]
        for label, b in got.items():
            if label != "direct":
                print(
                    f"{'':<10} added by {label.removeprefix('via ')}: p50 {pct(b, 50) - pct(d, 50):+.2f} ms, "
                    f"mean {(statistics.mean(b) - statistics.mean(d)) * 1000:+.2f} ms"
                )


if __name__ == "__main__":
    asyncio.run(main())
