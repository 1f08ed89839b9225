"""Many workspaces on one berth: idle cost, status reads, spread sends, one restart among many.

    python bench/scale.py [--n 1000] [--agents 4] [--idle-seconds 20] [--send-seconds 4]
                          [--rounds 3] [--concurrency 16] [--database-url postgresql://…]
                          [--env K=V …]

Starts berth (SQLite in a temporary directory by default) and trivial multi-identity agents
(bench/_many.py: one process answers, registers and heartbeats for many external
workspaces, so the agents are not the limit), then measures, first with 1 workspace (the
baseline) and then with N:

- berth's CPU at idle (heartbeats only): its utime+stime from /proc over --idle-seconds,
  as % of one core (its fast lane's process included when it runs one: berth's default on
  SQLite; `--env BERTH_FAST_LANE=off` for berth's Python server alone), and its RSS;
- `GET /v1/workspaces` and `GET /metrics`: p50/p99 over 20 calls each (and /metrics again
  at the end: 5 calls once every workspace has delivery histograms, then 10 calls each
  after one message to one workspace, the usual case of a scrape of many workspaces);
- closed-loop `message/send` at --concurrency, all to one workspace vs spread round robin
  over all N (same client, same agents), after a warm-up that reaches every workspace,
  in --rounds alternated rounds: the round of median throughput of each side;
- a restart of one workspace while sends spread over the others run: their latency
  before vs during the restart cycles, errors, and the cycles' own duration.

Figures, not assertions; the machine's other load skews them (compare within a run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import body as rpc_body  # noqa: E402
from proxy import Databases, env, free_port, wait_http  # noqa: E402

ADMIN = "bench-admin"
AUTH = {"authorization": f"Bearer {ADMIN}"}
TICK = os.sysconf("SC_CLK_TCK")


# the process under test ------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def lane_pids(pid: int) -> list[int]:
    """berth's fast lane, if it runs one: a child process of berth's (the agents here are
    the bench's own, not berth's children)."""
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            if b"berth-lane" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(int(child))
        except OSError:
            continue
    return out


def berth_cpu_seconds(pid: int) -> tuple[float, float | None]:
    """(berth's Python process, its fast lane's process: None without one) CPU seconds so far."""
    lanes = lane_pids(pid)
    lane = 0.0
    for child in lanes:
        with contextlib.suppress(OSError):
            lane += cpu_seconds(child)
    return cpu_seconds(pid), lane if lanes else None


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def idle_cpu(pid: int, seconds: float) -> tuple[float, float | None]:
    """% of a core over `seconds`: berth's Python process, and its fast lane's (None when
    berth runs none)."""
    (p0, l0), t0 = berth_cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    (p1, l1), dt = berth_cpu_seconds(pid), time.monotonic() - t0
    lane = None if l0 is None or l1 is None else (l1 - l0) / dt * 100
    return (p1 - p0) / dt * 100, lane


def start_berth(tmp: Path, db: dict[str, str], extra: dict[str, str]) -> tuple[Any, str]:
    """`db`: the environment naming berth's database ({}: SQLite in its data dir)."""
    port = free_port()
    # berth as it runs by default (its fast lane where it builds, on SQLite); the figures
    # before 2026-12-04 were measured with `--env BERTH_FAST_LANE=off`
    e = {"BERTH_ADMIN_TOKEN": ADMIN, "BERTH_LOG_LEVEL": "warning"}
    e |= {**db, **extra}
    proc = subprocess.Popen(
        [sys.executable, "-m", "berth", "serve", "--port", str(port), "--data-dir", str(tmp / "b")],
        env=env(**e),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz")
    except BaseException:
        proc.kill()
        raise
    return proc, url


def start_agent(tmp: Path, berth: str, ids: list[dict[str, str]], k: int) -> Any:
    path = tmp / f"ids-{k}.json"
    path.write_text(json.dumps(ids))
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "_many.py"), "--berth", berth]
        + ["--identities", str(path)],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    return proc


# the API --------------------------------------------------------------------
async def create(s: aiohttp.ClientSession, url: str, names: list[str]) -> list[dict[str, str]]:
    sem = asyncio.Semaphore(8)

    async def one(name: str) -> dict[str, str]:
        body = {"name": name, "runtime": "external", "max_concurrency": 16}
        async with sem, s.post(url + "/v1/workspaces", json=body, headers=AUTH) as r:
            doc = await r.json()
            if r.status != 201:
                raise RuntimeError(f"create {name}: {r.status} {doc}")
            return {"name": name, "token": doc["agent_token"]}  # what the agent registers with

    return list(await asyncio.gather(*(one(n) for n in names)))


async def wait_online(s: aiohttp.ClientSession, url: str, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with s.get(url + "/v1/workspaces", headers=AUTH) as r:
            ws = (await r.json())["workspaces"]
        if sum(w["status"] == "online" for w in ws) >= n:
            return
        await asyncio.sleep(1)
    raise RuntimeError(f"fewer than {n} workspaces came online")


async def timed_gets(s: aiohttp.ClientSession, url: str, k: int = 20) -> tuple[float, float]:
    lat = []
    for _ in range(k):
        t0 = time.perf_counter()
        async with s.get(url, headers=AUTH) as r:
            await r.read()
            assert r.status == 200, r.status
        lat.append(time.perf_counter() - t0)
    return pct(lat, 50), pct(lat, 99)


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(p / 100 * len(ys)))] * 1000


def message() -> dict[str, Any]:
    return rpc_body("bench")


async def load(
    s: aiohttp.ClientSession,
    urls: list[str],
    concurrency: int,
    seconds: float,
    stamps: list[tuple[float, float, bool]] | None = None,
) -> tuple[float, float, float, int]:
    """Closed loop over `urls` round robin: (msg/s, p50 ms, p99 ms, errors)."""
    nxt = itertools.cycle(urls)
    lat: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while (t0 := time.perf_counter()) < stop_at:
            try:
                async with s.post(next(nxt), json=message(), headers=AUTH) as r:
                    ok = r.status == 200 and b'"result"' in await r.read()
            except aiohttp.ClientError:
                ok = False
            t1 = time.perf_counter()
            lat.append(t1 - t0)
            errors += 0 if ok else 1
            if stamps is not None:
                stamps.append((t0, t1, ok))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(lat) / (time.perf_counter() - t0), pct(lat, 50), pct(lat, 99), errors


async def restart_effect(
    s: aiohttp.ClientSession, url: str, names: list[str], concurrency: int, cycles: int = 3
) -> dict[str, Any]:
    """Sends spread over names[1:] while names[0] restarts `cycles` times."""
    others = [f"{url}/v1/workspaces/{n}/a2a" for n in names[1:]]
    stamps: list[tuple[float, float, bool]] = []
    windows: list[tuple[float, float]] = []
    durations: list[float] = []

    async def restarts() -> None:
        await asyncio.sleep(2.0)
        for _ in range(cycles):
            t0 = time.perf_counter()
            async with s.post(
                f"{url}/v1/workspaces/{names[0]}/restart", json={}, headers=AUTH
            ) as r:
                rid = (await r.json())["id"]
            while True:
                async with s.get(
                    f"{url}/v1/workspaces/{names[0]}/restarts/{rid}", headers=AUTH
                ) as r:
                    phase = (await r.json())["phase"]
                if phase in ("done", "failed"):
                    break
                await asyncio.sleep(0.05)
            t1 = time.perf_counter()
            windows.append((t0, t1))
            durations.append((t1 - t0) * 1000)
            await asyncio.sleep(1.0)

    seconds = 2.0 + cycles * 1.5 + 2.0
    task = asyncio.create_task(restarts())
    await load(s, others, concurrency, seconds, stamps)
    await task

    def during(t0: float, t1: float) -> bool:
        return any(a <= t1 and t0 <= b for a, b in windows)

    inside = [b - a for a, b, _ in stamps if during(a, b)]
    outside = [b - a for a, b, _ in stamps if not during(a, b)]
    return {
        "before_p50": pct(outside, 50),
        "before_p99": pct(outside, 99),
        "during_p50": pct(inside, 50),
        "during_p99": pct(inside, 99),
        "during_n": len(inside),
        "errors": sum(not ok for _, _, ok in stamps),
        "restart_ms": statistics.median(durations) if durations else float("nan"),
    }


# the run --------------------------------------------------------------------
async def measure(
    s: aiohttp.ClientSession, url: str, pid: int, names: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    await asyncio.sleep(3.0)  # let registration and first heartbeats settle
    py, lane = await idle_cpu(pid, args.idle_seconds)
    out: dict[str, Any] = {"cpu": py + (lane or 0.0), "lane_cpu": lane, "rss": rss_mb(pid)}
    out["list"] = await timed_gets(s, url + "/v1/workspaces")
    out["metrics"] = await timed_gets(s, url + "/metrics")
    one = [f"{url}/v1/workspaces/{names[0]}/a2a"]
    spread = [f"{url}/v1/workspaces/{n}/a2a" for n in names]
    # warm-up: every workspace's first message creates its metric series (once, not per send)
    await load(s, one, args.concurrency, 1.0)
    await load(s, spread, args.concurrency, max(1.0, len(spread) / 200))
    # alternated rounds, the median of each side: the machine's other load drifts
    ones, spreads = [], []
    for _ in range(args.rounds):
        ones.append(await load(s, one, args.concurrency, args.send_seconds))
        if len(names) > 1:
            spreads.append(await load(s, spread, args.concurrency, args.send_seconds))
    out["one"] = median_run(ones)
    if spreads:
        out["spread"] = median_run(spreads)
        out["restart"] = await restart_effect(s, url, names, args.concurrency)
        # every workspace now has delivery histograms: the exposition is that much longer
        out["metrics_busy"] = await timed_gets(s, url + "/metrics", 5)
        out["metrics_one"] = await metrics_after_one_send(s, url, names[0])
    return out


async def metrics_after_one_send(
    s: aiohttp.ClientSession, url: str, name: str, k: int = 10
) -> tuple[float, float]:
    """/metrics p50/p99 when one workspace changed since the last scrape (a send to it)."""
    lat = []
    for _ in range(k):
        await load(s, [f"{url}/v1/workspaces/{name}/a2a"], 1, 0.001)
        t0 = time.perf_counter()
        async with s.get(url + "/metrics", headers=AUTH) as r:
            await r.read()
        lat.append(time.perf_counter() - t0)
    return pct(lat, 50), pct(lat, 99)


def median_run(runs: list[tuple[float, float, float, int]]) -> tuple[float, float, float, int]:
    """The run of median throughput."""
    return sorted(runs)[len(runs) // 2]


def report(base: dict[str, Any], big: dict[str, Any], n: int, c: int) -> None:
    def ms(x: tuple[float, float]) -> str:
        return f"{x[0]:.1f} / {x[1]:.1f} ms"

    def snd(x: tuple[float, float, float, int]) -> str:
        return f"{x[0]:.0f} msg/s, p50 {x[1]:.1f} ms, p99 {x[2]:.1f} ms, err {x[3]}"

    def cpu(x: dict[str, Any]) -> str:  # berth's, its lane's included (shown when it ran)
        lane = "" if x["lane_cpu"] is None else f" (lane {x['lane_cpu']:.1f} %)"
        return f"{x['cpu']:.1f} %{lane}"

    rows = [
        ("idle CPU (% of a core)", cpu(base), cpu(big), "<= 5 %"),
        ("RSS", f"{base['rss']:.0f} MB", f"{big['rss']:.0f} MB", "<= 300 MB"),
        ("GET /v1/workspaces p50/p99", ms(base["list"]), ms(big["list"]), "< 50 ms"),
        ("GET /metrics p50/p99", ms(base["metrics"]), ms(big["metrics"]), "< 50 ms"),
        ("  ... after sends to every workspace", "", ms(big["metrics_busy"]), "< 50 ms"),
        ("  ... each after a send to one", "", ms(big["metrics_one"]), "< 50 ms"),
        (f"sends to one workspace, c={c}", snd(base["one"]), snd(big["one"]), ""),
        (f"sends spread over all {n}, c={c}", "", snd(big["spread"]), "= to one"),
    ]
    r = big["restart"]
    rows += [
        (
            f"sends to the other {n - 1}: before",
            "",
            f"p50 {r['before_p50']:.1f} ms, p99 {r['before_p99']:.1f} ms",
            "",
        ),
        (
            "  ... during a restart of one",
            "",
            f"p50 {r['during_p50']:.1f} ms, p99 {r['during_p99']:.1f} ms "
            f"({r['during_n']} sends, err {r['errors']})",
            "unaffected",
        ),
        ("  the restart cycle itself (median)", "", f"{r['restart_ms']:.0f} ms", ""),
    ]
    w = [max(len(row[i]) for row in rows) for i in range(4)]
    head = ("", "N=1", f"N={n}", "target")
    print(" | ".join(h.ljust(w[i]) for i, h in enumerate(head)))
    print("-+-".join("-" * x for x in w))
    for row in rows:
        print(" | ".join(v.ljust(w[i]) for i, v in enumerate(row)))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--send-seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3, help="alternated send rounds per side")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--database-url")
    ap.add_argument("--env", action="append", default=[], help="K=V for berth, repeatable")
    args = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in args.env)
    procs: list[Any] = []
    dbs = Databases(args.database_url)  # a database of its own, created and dropped here
    with tempfile.TemporaryDirectory(prefix="berth-scale-") as t:
        tmp = Path(t)
        try:
            berth, url = start_berth(tmp, await dbs.fresh(), extra)
            procs.append(berth)
            store = "postgresql" if args.database_url else "sqlite"
            print(f"# berth with many workspaces: {os.cpu_count()} cores, store {store}, {extra}")
            conn = aiohttp.TCPConnector(limit=args.concurrency * 2)
            async with aiohttp.ClientSession(connector=conn) as s:
                tag = uuid.uuid4().hex[:6]
                names = [f"s{tag}-{i}" for i in range(args.n)]
                ids = await create(s, url, names[:1])
                procs.append(start_agent(tmp, url, ids, 0))
                await wait_online(s, url, 1)
                base = await measure(s, url, berth.pid, names[:1], args)
                t0 = time.monotonic()
                ids = await create(s, url, names[1:])
                per = -(-len(ids) // args.agents)
                for k in range(args.agents):
                    procs.append(start_agent(tmp, url, ids[k * per : (k + 1) * per], k + 1))
                await wait_online(s, url, args.n)
                print(f"# {args.n} workspaces created and online in {time.monotonic() - t0:.1f} s")
                big = await measure(s, url, berth.pid, names, args)
            report(base, big, args.n, args.concurrency)
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            await dbs.drop_all()


if __name__ == "__main__":
    asyncio.run(main())
