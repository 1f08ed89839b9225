"""The delivery log's hot path through the Store port: accepted -> claimed -> settled done, per second.

    python bench/delivery_log.py [--backends sqlite,postgres] [--count 5000] [--finished 0,1000000]
                                 [--dispatch proxy,ws,1,8] [--producers 8] [--pg-modes batched,single]
                                 [--database-url postgresql://postgres@127.0.0.1:5432/test] [--quick]
                                 [--no-c-floor] [--c-floor-seconds 8]

Producers accept deliveries (round robin over 8 workspaces with max_concurrency 4), each
one at a time, while dispatchers drain them. `--dispatch ws` runs berth's dispatcher shape:
one loop per workspace that claims up to the capacity left, settles each claimed delivery
in its own task, and claims again when one ends or new work is accepted. `--dispatch proxy`
adds what berth's proxy does in front of it: a message to a workspace with room (in this
process's count of forwards) is accepted and claimed at once (`accept_claim`: one commit
on SQLite and PostgreSQL; an accept and a claim in one flush for the batched bare SQL) and
its forward starts at once, the producer going on to its next message; the rest wait for
the workspace's loop. A number N runs N sweeping tasks instead, each claiming workspace
after workspace and settling what it got.
Each configuration runs a fixed number of deliveries (after a short warm-up) and reports
deliveries/s end to end and the p50/p99 of accept -> settled.

Backends: SQLite (a file in a temporary directory, synchronous=NORMAL, the default, and
FULL) and PostgreSQL (a fresh database created and dropped by the bench, server settings
as they are: fsync and synchronous_commit are printed). Each level of --finished starts
from a table holding that many 'done' rows; rows a run adds are deleted before the next.

Baselines, measured in the same run with the same producers/dispatchers/workspaces and the
same table and indexes, bare SQL without berth code (bench/_log_engines.py):
* `single` (PostgreSQL and SQLite): one commit per step per delivery -- a plain INSERT, a
  claim of one row (UPDATE ... WHERE seq = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)), an
  UPDATE to done; beside berth with group commit off;
* `batched` (PostgreSQL): concurrent calls gathered the way berth gathers them -- one
  multi-row INSERT, one UPDATE claiming for every waiting workspace, one UPDATE ... FROM
  unnest for the acks; beside berth with group commit on (its default).
"berth/bare" is the throughput ratio.
* the compiled floor (PostgreSQL, with `--dispatch proxy`; `--no-c-floor` leaves it out):
  pgbench running the proxy shape's flush on the same table, 2 connections x 4 deliveries
  a flush, no Python in the way (bench/_pg_floor.py); "berth proxy/floor" is berth's
  `proxy` row as a share of it.

Latency is accept -> settled at saturation: with a closed window it is mostly queueing
(about window / throughput), so compare it between rows rather than read it as service time.
Per delivery: "py us" is this process's CPU (Python, asyncpg, sqlite3), "pg us" the CPU of
the PostgreSQL backends serving the bench's database (read from /proc), "wal B" the bytes
of WAL PostgreSQL wrote (steady where CPU time and throughput move with the host), "stmts" the
statements sent (each write statement one commit). Each row also shows how many calls a
flush carried (accept/claim/settle), the load average and how busy the whole machine was.

Figures, not assertions. Other jobs on the machine skew them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from berth.domain.ids import time_ordered_id

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _log_backends import WORKSPACES, EngineFactory, PgBackend, SqliteBackend  # noqa: E402
from _log_engines import MAX_CONCURRENCY, REPLY, REQUEST, Engine  # noqa: E402
from _pg_floor import find_pgbench, run_floor  # noqa: E402
from _pg_lane import build_lane_bench, run_lane  # noqa: E402

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


# the load ---------------------------------------------------------------------------------
@dataclass
class Result:
    n: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0  # CPU seconds of this process (client side: Python, drivers, sqlite)
    pg_cpu: float | None = None  # CPU seconds of the PostgreSQL backends of the bench's database
    wal: float | None = (
        None  # bytes of WAL written meanwhile (the whole cluster's; it is idle else)
    )
    flushes: list[tuple[int, int]] = field(default_factory=list)  # (flushes, items) per step

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000

    def per_flush(self) -> str:
        return "/".join(f"{i / f:.1f}" if f else "-" for f, i in self.flushes) or "-"


async def drive(
    eng: Engine, ws_ids: list[str], count: int, dispatch: str, producers: int, window: int
) -> Result:
    """Accept `count` deliveries and wait until all are settled; at most `window` outstanding."""
    t0s: dict[str, float] = {}
    lat: list[float] = []
    sem = asyncio.Semaphore(window)
    work = asyncio.Event()
    finished = asyncio.Event()
    todo = iter(range(count))
    wake = {ws: asyncio.Event() for ws in ws_ids}
    owner = f"bench-{os.getpid()}"

    busy = dict.fromkeys(ws_ids, 0)  # forwards running per workspace (`ws` and `proxy`)
    maybe_queued = dict.fromkeys(ws_ids, True)  # as berth's Dispatcher._maybe_queued
    running: set[asyncio.Task[None]] = set()

    def launch(ws: str, ids: list[str]) -> None:
        busy[ws] += len(ids)
        for did in ids:
            task = asyncio.create_task(forward(ws, did))
            running.add(task)
            task.add_done_callback(running.discard)

    async def forward(ws: str, did: str) -> None:
        """A forward that answers at once, then the settle (berth's Dispatcher._forward)."""
        await settle_one(did, owner)
        busy[ws] -= 1
        wake[ws].set()

    async def producer(k: int) -> None:
        for i in todo:  # shared: the producers split the count between them
            await sem.acquire()
            did = time_ordered_id()  # as berth's proxy makes them
            t0s[did] = time.perf_counter()
            ws = ws_ids[i % len(ws_ids)]
            room = MAX_CONCURRENCY - busy[ws]
            if dispatch == "proxy" and room > 0:
                # berth's proxy: a message to a workspace with room is claimed in the commit
                # that accepts it and forwarded at once (DeliveryLog.accept, claim_on_accept);
                # the workspace's loop is woken only when it was left queued
                ids = await eng.accept_claim(did, ws, owner, room)
                launch(ws, ids)
                if did in ids:
                    continue
            else:
                await eng.accept(did, ws)
            maybe_queued[ws] = True
            work.set()
            wake[ws].set()

    async def settle_one(did: str, owner: str) -> None:
        await eng.settle(did, owner)
        lat.append(time.perf_counter() - t0s.pop(did))
        sem.release()
        if len(lat) >= count:
            finished.set()
            work.set()
            for ev in wake.values():
                ev.set()

    async def sweeper(k: int) -> None:
        mine = f"{owner}-{k}"
        order = ws_ids[k % len(ws_ids) :] + ws_ids[: k % len(ws_ids)]
        while not finished.is_set():
            work.clear()
            claimed = 0
            for ws in order:
                ids = await eng.claim(ws, mine, MAX_CONCURRENCY)
                claimed += len(ids)
                if ids:
                    await asyncio.gather(*(settle_one(did, mine) for did in ids))
            if not claimed and not finished.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(work.wait(), 0.05)

    async def ws_loop(ws: str) -> None:
        """berth's Dispatcher._loop, with a forward that answers at once."""
        ev = wake[ws]
        while not finished.is_set():
            ev.clear()
            room = MAX_CONCURRENCY - busy[ws]
            if room > 0 and maybe_queued[ws]:
                maybe_queued[ws] = False  # an accept during the claim sets it again
                ids = await eng.claim(ws, owner, room)
                launch(ws, ids)
                if ids and len(ids) == room:
                    maybe_queued[ws] = True
                    continue  # it took all it could: there may be more
            if not finished.is_set():
                try:
                    await asyncio.wait_for(ev.wait(), 0.05)
                except asyncio.TimeoutError:
                    maybe_queued[ws] = True  # the slow poll (a bare claim takes one at a time)
        while running:
            await asyncio.gather(*running)

    f0 = eng.flushes()
    cpu0, start = time.process_time(), time.perf_counter()
    tasks = [asyncio.create_task(producer(i)) for i in range(producers)]
    if dispatch in ("ws", "proxy"):
        tasks += [asyncio.create_task(ws_loop(ws)) for ws in ws_ids]
    else:
        tasks += [asyncio.create_task(sweeper(k)) for k in range(int(dispatch))]
    await asyncio.gather(*tasks)
    flushes = [(f - g, i - j) for (f, i), (g, j) in zip(eng.flushes(), f0, strict=True)]
    return Result(
        count, time.perf_counter() - start, lat, time.process_time() - cpu0, flushes=flushes
    )


# the run ----------------------------------------------------------------------------------
def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def host_cpu() -> tuple[int, int, int]:
    """(busy, steal, total) jiffies of the whole machine, from /proc/stat (zeros elsewhere)."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return 0, 0, 0
    user, nice, system, idle, iowait, irq, softirq, steal = f
    return user + nice + system + irq + softirq + steal, steal, sum(f)


def host_busy(before: tuple[int, int, int]) -> str:
    after = host_cpu()
    busy, steal, total = (a - b for a, b in zip(after, before, strict=True))
    return (
        f"host cpu busy {busy / total * 100:.0f}% (steal {steal / total * 100:.0f}%)"
        if total
        else ""
    )


async def measure(
    factory: EngineFactory,
    backend: SqliteBackend | PgBackend,
    args: argparse.Namespace,
    dispatch: str,
) -> Result:
    eng, close = await factory()
    ws_ids = [w.id for w in backend.ws]
    try:
        await drive(eng, ws_ids, args.warmup, dispatch, args.producers, args.window)
        await backend.cleanup()
        pg0, wal0 = backend.backend_cpu(), await backend.wal_position()
        r = await drive(eng, ws_ids, args.count, dispatch, args.producers, args.window)
        pg1, wal1 = backend.backend_cpu(), await backend.wal_position()
        r.pg_cpu = None if pg0 is None or pg1 is None else pg1 - pg0
        r.wal = None if wal0 is None or wal1 is None else wal1 - wal0
        return r
    finally:
        await close()
        await backend.cleanup()


HEAD = (
    f"{'variant':<13}{'disp':>5}{'finished':>10} | {'berth/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
    f"{'py us':>7}{'pg us':>7}{'wal B':>6}{'stmts':>6} | {'bare/s':>8}{'p50 ms':>8}"
    f"{'p99 ms':>8}{'py us':>7}{'pg us':>7}{'wal B':>6}{'stmts':>6} | {'berth/bare':>10}"
)


def row(label: str, disp: str, finished: int, b: Result, r: Result) -> str:
    def cols(x: Result) -> str:
        pg = "-" if x.pg_cpu is None else f"{x.pg_cpu / x.n * 1e6:.0f}"
        wal = "-" if x.wal is None else f"{x.wal / x.n:.0f}"
        stmts = f"{sum(f for f, _ in x.flushes) / x.n:.2f}" if x.flushes else "-"
        return (
            f"{x.rate:>8.0f}{x.pct(50):>8.2f}{x.pct(99):>8.2f}{x.cpu / x.n * 1e6:>7.0f}{pg:>7}"
            f"{wal:>6}{stmts:>6}"
        )

    return (
        f"{label:<13}{disp:>5}{finished:>10,} | {cols(b)} | {cols(r)} | "
        f"{b.rate / r.rate * 100:>9.0f}%"
    )


async def c_floor(
    backend: PgBackend,
    args: argparse.Namespace,
    finished: int,
    berth_rate: float | None,
    lane_rate: float | None = None,
) -> str:
    """The compiled floor of the proxy shape's flush (bench/_pg_floor.py), on this level's
    table: its line, with berth's `proxy` row (group commit on) and the lane's as shares of
    it."""
    label = f"{'pg C floor':<13}{'proxy':>5}{finished:>10,} | "
    pgbench = find_pgbench()
    if pgbench is None:
        return label + "pgbench not found: no compiled floor"
    seconds = 1.0 if args.quick else args.c_floor_seconds
    try:
        f = await run_floor(
            pgbench,
            backend.url,
            [w.id for w in backend.ws],
            REQUEST.decode(),
            REPLY.decode(),
            seconds=seconds,
            host_cpu=host_cpu,
        )
    finally:
        await backend.cleanup()
    host = "-" if f.host_cpu_us is None else f"{f.host_cpu_us:.0f}"
    share = f"{berth_rate / f.rate * 100:>9.0f}%" if berth_rate else f"{'-':>10}"
    return (
        label + f"{f.rate:>8.0f}/s, a flush {f.latency_ms:.2f} ms, host CPU {host} us a "
        f"delivery (pgbench, {f.clients} connections x {f.k} settles + {f.k} "
        f"in-flight accepts a flush, berth's table) | berth proxy/floor {share}"
        + (f", lane/floor {lane_rate / f.rate * 100:.0f}%" if lane_rate else "")
    )


async def lane_row(
    backend: PgBackend, args: argparse.Namespace, finished: int, exe: Path | None, why: str
) -> tuple[str, float | None]:
    """berth's proxy shape through the fast lane's own writer (bench/_pg_lane.py): its line
    and rate."""
    label = f"{'pg lane (C)':<13}{'proxy':>5}{finished:>10,} | "
    if exe is None:
        return label + f"the lane could not be built ({why})", None
    seconds = 1.0 if args.quick else args.lane_seconds
    # the bench's workspaces as berth holds an external workspace whose agent registered:
    # its agent URL (loopback; nothing is sent to it)
    await backend.conn.execute(
        "UPDATE workspaces SET agent_url = url WHERE agent_url IS NULL AND url IS NOT NULL"
    )
    try:
        r = await run_lane(
            exe,
            backend.url,
            [w.id for w in backend.ws],
            producers=args.producers,
            seconds=seconds,
            host_cpu=host_cpu,
        )
    finally:
        await backend.cleanup()
    host = "-" if r.host_cpu_us is None else f"{r.host_cpu_us:.0f}"
    return (
        label + f"{r.rate:>8.0f}/s accepted -> settled, accept p50 {r.p50_ms:.2f} ms, "
        f"p99 {r.p99_ms:.2f} ms, {r.writes_per_flush:.1f} writes a flush (one statement, "
        f"one commit), host CPU {host} us a delivery; {r.settled:,} settled, "
        f"{r.refused} left to Python",
        r.rate,
    )


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--count", type=int, default=5000, help="deliveries per configuration")
    ap.add_argument("--finished", default="0,1000000", help="'done' rows already in the table")
    ap.add_argument(
        "--dispatch",
        default="proxy,ws,8",
        help="'proxy': berth's proxy and dispatcher (accept_claim when the workspace has room); "
        "'ws': a claim loop per workspace (berth's dispatcher alone); N: N sweeping tasks",
    )
    ap.add_argument("--producers", type=int, default=8, help="concurrent accepting tasks")
    ap.add_argument("--pg-modes", default="batched,single", help="group commit on / off")
    ap.add_argument(
        "--window", type=int, default=64, help="most deliveries accepted but not yet settled"
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=500,
        help="deliveries run (and dropped) before each measurement",
    )
    ap.add_argument("--sqlite-sync", default="NORMAL,FULL")
    ap.add_argument(
        "--database-url",
        default=os.environ.get("BERTH_BENCH_PG", DEFAULT_PG),
        help="an existing database to connect to for CREATE/DROP DATABASE",
    )
    ap.add_argument(
        "--pool-size", type=int, help="PostgresStore max_size (default: the store's own)"
    )
    ap.add_argument(
        "--c-floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="PostgreSQL, with the proxy shape: pgbench running berth's flush on berth's table "
        "beside berth (the compiled floor, bench/_pg_floor.py)",
    )
    ap.add_argument("--c-floor-seconds", type=float, default=8.0)
    ap.add_argument(
        "--lane",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="PostgreSQL, with the proxy shape: the same shape through the fast lane's own "
        "writer, compiled here with -DLANE_LOG_BENCH (bench/_pg_lane.py)",
    )
    ap.add_argument("--lane-seconds", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true", help="small numbers for a smoke run")
    ap.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="as berth serve runs"
    )
    args = ap.parse_args()
    return args


async def main(args: argparse.Namespace) -> None:
    if args.quick:
        args.count, args.warmup = 200, 30
        if args.finished == "0,1000000":
            args.finished = "0,10000"
    levels = [int(x) for x in args.finished.split(",")]
    disps = args.dispatch.split(",")
    started = time.perf_counter()
    print(
        f"# berth delivery log benchmark: {os.cpu_count()} cores, load average {load()}; {args.count} "
        f"deliveries per run (+{args.warmup} warm-up), {args.producers} producers, window {args.window}, "
        f"{WORKSPACES} workspaces x max_concurrency {MAX_CONCURRENCY}; event loop "
        f"{type(asyncio.get_running_loop()).__module__}"
    )
    print(
        "# per delivery: py us = CPU of this process (client side), pg us = CPU of the PostgreSQL "
        "backends serving the bench's database, wal B = bytes of WAL written, stmts = statements "
        "sent; berth/bare = throughput ratio"
    )
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as tmp:
        lane_exe, lane_why = None, "not asked for"
        if args.lane and "postgres" in args.backends.split(",") and "proxy" in disps:
            lane_exe, lane_why = build_lane_bench(Path(tmp))
        for name in args.backends.split(","):
            backend: SqliteBackend | PgBackend
            if name == "sqlite":
                backend = SqliteBackend(Path(tmp), [m.upper() for m in args.sqlite_sync.split(",")])
            elif name == "postgres":
                backend = PgBackend(args.database_url, args.pool_size, args.pg_modes.split(","))
            else:
                raise SystemExit(f"unknown backend {name!r}")
            await backend.setup()
            try:
                print(f"# {backend.info()}")
                for finished in levels:
                    t = time.perf_counter()
                    await backend.seed(finished)
                    print(
                        f"# {name}: {finished:,} finished rows in place ({time.perf_counter() - t:.1f} s)"
                    )
                    if finished == max(levels):
                        for line in await backend.explain():
                            print(f"#   plan with {finished:,} finished rows, {line}")
                    print(HEAD)
                    proxy_rate: float | None = None
                    for v in backend.variants():
                        for d in disps:
                            cpu0 = host_cpu()
                            b = await measure(v.berth, backend, args, d)
                            r = await measure(v.bare, backend, args, d)
                            if d == "proxy" and v.label == "pg batched":
                                proxy_rate = b.rate
                            lines.append(row(v.label, d, finished, b, r))
                            print(
                                lines[-1] + f"   (calls/flush accept/claim/settle: berth "
                                f"{b.per_flush()}, bare {r.per_flush()}; load {load()}, "
                                f"{host_busy(cpu0)})",
                                flush=True,
                            )
                    lane_rate: float | None = None
                    if isinstance(backend, PgBackend) and args.lane and "proxy" in disps:
                        line, lane_rate = await lane_row(
                            backend, args, finished, lane_exe, lane_why
                        )
                        lines.append(line)
                        print(lines[-1], flush=True)
                    if isinstance(backend, PgBackend) and args.c_floor and "proxy" in disps:
                        lines.append(await c_floor(backend, args, finished, proxy_rate, lane_rate))
                        print(lines[-1], flush=True)
            finally:
                await backend.close()
    print()
    print(HEAD)
    print("\n".join(lines))
    print(f"# total {time.perf_counter() - started:.0f} s; load average at the end {load()}")


if __name__ == "__main__":
    options = parse()
    if options.loop == "uvloop":
        import uvloop

        uvloop.run(main(options))
    else:
        asyncio.run(main(options))
