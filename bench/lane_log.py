"""berth's delivery log end to end through its fast lane, with producers and an agent that
cost the host next to nothing: what is measured is berth.

    python bench/lane_log.py [--seconds 5] [--rounds 1] [--producers 8] [--workspaces 8]
                             [--database-url postgresql://postgres@127.0.0.1:5432/test]
                             [--finished N] [--wait-header 0] [--no-lane] [--warmup 1]

Compiles, with gcc, a closed-loop HTTP/1.1 load generator (bench/_cload.c: a thread per
keep-alive connection, one `message/send` at a time, a messageId of its own each) and a
trivial A2A agent (bench/_cagent.c: one thread, epoll, one fixed JSON-RPC result per POST),
starts the agent and one berth (BERTH_FAST_LANE=on, `--no-lane`: off; on a fresh
PostgreSQL database of its own with `--database-url`, created and dropped here, else
SQLite in its data dir, berth's default `synchronous=FULL`), registers `--workspaces`
external workspaces (max_concurrency 4) on the agent, and sends with `--producers`
connections in all, spread over the workspaces (one load process per workspace), each
request with the admin token and `X-Berth-Wait: 0` (`--wait-header`): berth answers 202
once the message is durably accepted, and its forward and settle go on. After `--seconds`
no request is started; then the bench waits until every delivery the run created is
final (polling berth's store) and reports, per round:

- accepted/s: 2xx answers (202s, or 200s when berth waited for the reply) per second of
  the load; the p50/p99 of those answers (the accept, from the caller's side);
- settled/s: deliveries done / (from the load's start to the last one's finished_at, as
  berth wrote it);
- which path served: the lane's share of the deliveries done
  (berth_lane_deliveries_total, /metrics) and whether the lane was up (berth_lane_up);
- CPU seconds, and per delivery: berth's Python server and its `berth-lane` child (each,
  from /proc), the agent, the load processes (their own getrusage), the PostgreSQL
  backends of berth's database (PostgreSQL only), and how busy the whole host was;
- that nothing was lost: the 2xx answers against the deliveries that ended `done` in
  berth's store (counted with SQL), and any that ended otherwise.

A warm-up (`--warmup` seconds, its deliveries settled and left out) precedes the rounds.
`--finished N` puts N finished `done` deliveries of one more workspace into berth's table
before berth starts (berth's schema migrated first; one INSERT ... SELECT), so the log is
measured with a big table under it. With `--database-url` the compiled floor of the same
flush on PostgreSQL (bench/_pg_floor.py: pgbench, berth's table, no Python) runs on a
database of its own after berth is stopped, and berth's settled/s is printed as a share.

The lane serves SQLite by default and PostgreSQL with BERTH_FAST_LANE=on, which this bench
sets (docs/fast-lane.md); `--no-lane` measures berth's Python alone. The report says which
path served. Figures, not assertions: other jobs on this 2-core host skew them. The log
alone, without HTTP or an agent, is bench/delivery_log.py's `pg lane (C)` row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _log_backends import pg_backends_cpu  # noqa: E402
from _pg_floor import find_pgbench, run_floor  # noqa: E402
from delivery_log import host_cpu  # noqa: E402
from proxy import (  # noqa: E402
    ADMIN,
    AUTH,
    Databases,
    Procs,
    env,
    free_port,
    start_berth,
    wait_http,
    workspace,
)

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")
# what the load sends and the agent answers (the floor writes the same bytes)
REQUEST = (
    '{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":{"role":"ROLE_USER",'
    '"messageId":"c0-1-0000000000000000","parts":[{"text":"hi"}]}}}'
)
REPLY = (
    '{"jsonrpc":"2.0","id":1,"result":{"kind":"message","role":"agent","messageId":"r",'
    '"parts":[{"kind":"text","text":"ok"}]}}'
)
FINAL = ("done", "dead", "canceled", "expired")


# processes ------------------------------------------------------------------------------
class LoggedProcs(Procs):
    """proxy.Procs, with each process's stderr kept in a file (berth's log says which path
    serves: its "fast lane" lines)."""

    def __init__(self, logs: Path) -> None:
        super().__init__()
        self.logs = logs
        self.log_of: dict[int, Path] = {}

    def start(self, cmd: list[str], health: str, **extra: str) -> subprocess.Popen[bytes]:
        path = self.logs / f"proc-{len(self.all)}.log"
        with path.open("wb") as err:
            proc = subprocess.Popen(cmd, env=env(**extra), stdout=subprocess.DEVNULL, stderr=err)
        self.all.append(proc)
        self.log_of[proc.pid] = path
        wait_http(health, timeout=120)  # the first start builds the lane with gcc
        return proc


def compile_c(tmp: Path) -> tuple[Path, Path]:
    out = []
    for name, libs in (("_cload.c", ["-lpthread"]), ("_cagent.c", [])):
        exe = tmp / name.removeprefix("_").removesuffix(".c")
        cmd = ["gcc", "-O2", "-o", str(exe), str(HERE / name), *libs]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"gcc {name} failed:\n{done.stderr}")
        out.append(exe)
    return out[0], out[1]


def start_agent(procs: Procs, exe: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    proc = subprocess.Popen([str(exe), str(port)], stdout=subprocess.PIPE)
    procs.all.append(proc)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise SystemExit("the C agent did not start")
    return f"http://127.0.0.1:{port}/", proc


def proc_cpu(pid: int) -> float:
    """user + system CPU seconds of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


@dataclass
class Cpu:
    berth_py: float
    lane: dict[int, float]  # berth's children (its berth-lane process) by pid
    agent: float
    pg: float | None
    host: tuple[int, int, int]

    @classmethod
    def now(cls, berth: int, agent: int, pg_db: str | None) -> Cpu:
        kids = {k: proc_cpu(k) for k in children(berth)}
        pg = pg_backends_cpu(pg_db) if pg_db else None
        return cls(proc_cpu(berth), kids, proc_cpu(agent), pg, host_cpu())


# berth's store ----------------------------------------------------------------------------
class Log:
    """Reads berth's deliveries table (SQLite read-only, or one asyncpg connection)."""

    def __init__(self, sqlite_path: Path | None, pg_url: str | None) -> None:
        self.sqlite_path, self.pg_url = sqlite_path, pg_url
        self.lite: sqlite3.Connection | None = None
        self.pg: Any = None

    async def open(self) -> None:
        if self.pg_url:
            import asyncpg

            self.pg = await asyncpg.connect(self.pg_url)
        else:
            uri = f"file:{self.sqlite_path}?mode=ro"
            self.lite = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)

    async def close(self) -> None:
        if self.pg is not None:
            await self.pg.close()
        if self.lite is not None:
            self.lite.close()

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.pg is not None:
            n = iter(range(1, 100))
            return [
                tuple(r)
                for r in await self.pg.fetch(re.sub(r"\?", lambda _: f"${next(n)}", sql), *args)
            ]
        assert self.lite is not None
        return self.lite.execute(sql, args).fetchall()

    async def max_seq(self) -> int:
        return int((await self.rows("SELECT coalesce(max(seq), 0) FROM deliveries"))[0][0])

    async def pending(self, seq0: int) -> int:
        sql = "SELECT count(*) FROM deliveries WHERE seq > ? AND status IN ('queued', 'in_flight')"
        return int((await self.rows(sql, seq0))[0][0])

    async def outcome(self, seq0: int) -> tuple[dict[str, int], float | None]:
        """Deliveries after seq0 by status, and the last finished_at of those done."""
        got = await self.rows(
            "SELECT status, count(*), max(finished_at) FROM deliveries WHERE seq > ? "
            "GROUP BY status",
            seq0,
        )
        counts = {s: int(n) for s, n, _ in got}
        last = next((float(f) for s, _, f in got if s == "done" and f is not None), None)
        return counts, last

    async def settle(self, seq0: int, timeout: float = 300.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.pending(seq0) == 0:
                return True
            await asyncio.sleep(0.02)
        return False


async def seed_finished(n: int, sqlite_path: Path | None, pg_url: str | None) -> float:
    """berth's schema, then n finished 'done' deliveries of one more workspace (not
    registered: rows in the table, as a long-running berth keeps them). Seconds taken."""
    t0 = time.perf_counter()
    old = time.time() - 2 * 86400
    cols = (
        "id, workspace_id, caller, message_id, method, request, headers, status, attempts, "
        "forwards, reply, reply_status, reply_type, not_before, created_at, "
        "first_forwarded_at, finished_at, updated_at"
    )
    if pg_url:
        import asyncpg

        from berth.adapters.sql.postgres import PostgresStore

        store = PostgresStore(pg_url)
        await store.migrate()
        await store.close()
        if not n:
            return 0.0
        c = await asyncpg.connect(pg_url)
        try:
            await c.execute("SET synchronous_commit = off")  # the seed's session only
            await c.execute(
                f"INSERT INTO deliveries ({cols}) SELECT md5('d' || g)::uuid::text, "
                "'bench-finished', 'operator', md5('m' || g)::uuid::text, 'SendMessage', "
                "convert_to($1, 'UTF8'), '{}', 'done', 1, 1, convert_to($2, 'UTF8'), 200, "
                "'application/json', 0, $3 + g * 0.0001, $3 + g * 0.0001, "
                "$3 + g * 0.0001 + 0.01, $3 + g * 0.0001 + 0.01 FROM generate_series(1, $4) AS g",
                REQUEST,
                REPLY,
                old,
                n,
            )
            await c.execute("VACUUM ANALYZE deliveries")
        finally:
            await c.close()
    else:
        from berth.adapters.sql.sqlite import SqliteStore

        assert sqlite_path is not None
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        store = SqliteStore(str(sqlite_path))
        await store.migrate()
        await store.close()
        if not n:
            return 0.0
        c = sqlite3.connect(str(sqlite_path), isolation_level=None, timeout=30)
        try:
            c.execute("BEGIN")
            c.execute(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :n) "
                f"INSERT INTO deliveries ({cols}) SELECT lower(hex(randomblob(16))), "
                "'bench-finished', 'operator', lower(hex(randomblob(16))), 'SendMessage', "
                ":req, '{}', 'done', 1, 1, :rep, 200, 'application/json', 0, :t0 + n * 0.0001, "
                ":t0 + n * 0.0001, :t0 + n * 0.0001 + 0.01, :t0 + n * 0.0001 + 0.01 FROM g",
                {"n": n, "req": REQUEST.encode(), "rep": REPLY.encode(), "t0": old},
            )
            c.execute("COMMIT")
            c.execute("ANALYZE")
        finally:
            c.close()
    return time.perf_counter() - t0


# berth's metrics ------------------------------------------------------------------------
def metrics(berth: str) -> dict[str, float]:
    """Sums of the series berth's /metrics shows for the lane and the outcomes."""
    text = httpx.get(berth + "/metrics", headers=AUTH, timeout=10).text
    out: dict[str, float] = {}
    want = {
        "berth_lane_up": None,
        "berth_lane_deliveries_total": None,
        "berth_lane_handoffs_total": None,
        "berth_deliveries_accepted_total": None,
        "berth_deliveries_total": 'outcome="done"',
    }
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? ([-+0-9.eEinfNa]+)", line)
        if not m or m[1] not in want:
            continue
        cond = want[m[1]]
        if cond and cond not in (m[2] or ""):
            continue
        out[m[1]] = out.get(m[1], 0.0) + float(m[3])
    return out


# the load ---------------------------------------------------------------------------------
@dataclass
class Load:
    n: int = 0
    seconds: float = 0.0
    status: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    resent: int = 0
    cpu: float = 0.0
    latencies: list[int] = field(default_factory=list)  # microseconds
    first_failure: str = ""

    @property
    def ok(self) -> int:
        return sum(k for s, k in self.status.items() if s.startswith("2"))

    def pct(self, p: float) -> float:
        xs = self.latencies
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] / 1000 if xs else float("nan")


def plan(producers: int, paths: list[str]) -> list[tuple[str, int]]:
    """(path, connections): producers spread over the workspaces, the first ones taking
    what does not divide."""
    each, extra = divmod(producers, len(paths))
    return [(p, each + (i < extra)) for i, p in enumerate(paths) if each + (i < extra)]


async def drive(
    cload: Path, port: int, paths: list[str], args: argparse.Namespace, seconds: float, tmp: Path
) -> Load:
    procs = []
    for i, (path, conns) in enumerate(plan(args.producers, paths)):
        lat = tmp / f"lat-{i}.txt"
        cmd = [str(cload), "127.0.0.1", str(port), path, f"{seconds:g}", str(conns), ADMIN]
        cmd += [f"X-Berth-Wait: {args.wait_header}"]
        procs.append(
            (
                lat,
                await asyncio.create_subprocess_exec(
                    *cmd,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env={**os.environ, "CLOAD_LATENCIES": str(lat)},
                ),
            )
        )
    load = Load()
    for lat, p in procs:
        out, err = await p.communicate()
        if p.returncode:
            raise SystemExit(f"cload failed ({p.returncode}): {err.decode()}")
        r = json.loads(out)
        load.n += r["n"]
        load.seconds = max(load.seconds, r["seconds"])
        for s, k in r["status"].items():
            load.status[s] = load.status.get(s, 0) + k
        load.errors += r["errors"]
        load.resent += r["resent"]
        load.cpu += r["cpu_s"]
        load.latencies += [int(x) for x in lat.read_text().split()]
        lat.unlink()
        if err.strip() and not load.first_failure:
            load.first_failure = err.decode(errors="replace").strip()[:800]
    load.latencies.sort()
    return load


# a round ----------------------------------------------------------------------------------
@dataclass
class Round:
    load: Load
    counts: dict[str, int]
    settled_in: float  # from the load's start to the last finished_at
    lane_done: float
    handoffs: float
    c0: Cpu
    c1: Cpu
    settled_all: bool

    @property
    def done(self) -> int:
        return self.counts.get("done", 0)

    @property
    def accepted_rate(self) -> float:
        return self.load.ok / self.load.seconds if self.load.seconds else 0.0

    @property
    def settled_rate(self) -> float:
        return self.done / self.settled_in if self.settled_in > 0 else 0.0

    def report(self, k: int) -> list[str]:
        L, c0, c1 = self.load, self.c0, self.c1
        per = max(1, self.done)
        py = c1.berth_py - c0.berth_py
        lane = sum(v - c0.lane.get(pid, 0.0) for pid, v in c1.lane.items())
        agent = c1.agent - c0.agent
        pg = None if c1.pg is None or c0.pg is None else c1.pg - c0.pg
        busy, steal, total = (a - b for a, b in zip(c1.host, c0.host, strict=True))
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(L.status.items()))
        lines = [
            f"round {k}: accepted {self.accepted_rate:,.0f}/s ({L.ok:,} 2xx in {L.seconds:.2f} s; "
            f"status {statuses}; errors {L.errors}, resent {L.resent}), accept p50 "
            f"{L.pct(50):.2f} ms, p99 {L.pct(99):.2f} ms",
            f"  settled {self.settled_rate:,.0f}/s ({self.done:,} done, the last "
            f"{self.settled_in:.2f} s after the start"
            + ("" if self.settled_all else "; NOT ALL SETTLED within the timeout")
            + f"); the lane served {self.lane_done / per * 100:.2f} % of them"
            f" ({self.lane_done:,.0f}; Python {self.done - self.lane_done:,.0f}, of which "
            f"{self.handoffs:,.0f} handed over by the lane after a forward)",
            f"  CPU s: berth {py + lane:.2f} (python {py:.2f}, lane {lane:.2f}) = "
            f"{(py + lane) / per * 1e6:.0f} us/delivery (python {py / per * 1e6:.0f}, lane "
            f"{lane / per * 1e6:.0f}); agent {agent:.2f} ({agent / per * 1e6:.0f} us); load "
            f"{L.cpu:.2f} ({L.cpu / per * 1e6:.0f} us)"
            + ("" if pg is None else f"; postgres {pg:.2f} ({pg / per * 1e6:.0f} us)")
            + (
                f"; host busy {busy / total * 100:.0f} % of {os.cpu_count()} cores"
                f" (steal {steal / total * 100:.0f} %)"
                if total
                else ""
            ),
        ]
        others = {s: n for s, n in self.counts.items() if s != "done"}
        if L.ok == self.done and not others:
            lines.append(f"  nothing lost: {L.ok:,} 2xx answers, {self.done:,} deliveries done")
        else:
            lines.append(
                f"  MISMATCH: {L.ok:,} 2xx answers, {self.done:,} deliveries done, others "
                f"{others or 'none'} ({L.errors} requests without an answer)"
            )
        if L.first_failure:
            lines.append(f"  first non-2xx answer: {L.first_failure}")
        return lines


async def one_round(
    log: Log,
    berth: str,
    berth_pid: int,
    agent_pid: int,
    pg_db: str | None,
    cload: Path,
    port: int,
    paths: list[str],
    args: argparse.Namespace,
    seconds: float,
    tmp: Path,
) -> Round:
    seq0 = await log.max_seq()
    m0 = metrics(berth)
    c0 = Cpu.now(berth_pid, agent_pid, pg_db)
    start = time.time()
    load = await drive(cload, port, paths, args, seconds, tmp)
    settled_all = await log.settle(seq0)
    c1 = Cpu.now(berth_pid, agent_pid, pg_db)
    counts, last = await log.outcome(seq0)
    # the lane's feed reaches Python's counters just after its COMMIT: wait for them
    deadline = time.monotonic() + 3.0
    while True:
        m1 = metrics(berth)
        moved = m1.get("berth_deliveries_total", 0.0) - m0.get("berth_deliveries_total", 0.0)
        if moved >= counts.get("done", 0) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)

    def delta(name: str) -> float:
        return m1.get(name, 0.0) - m0.get(name, 0.0)

    return Round(
        load,
        counts,
        (last - start) if last else 0.0,
        delta("berth_lane_deliveries_total"),
        delta("berth_lane_handoffs_total"),
        c0,
        c1,
        settled_all,
    )


def lane_lines(procs: LoggedProcs, pid: int) -> list[str]:
    path = procs.log_of.get(pid)
    if path is None or not path.exists():
        return []
    return [
        line.strip()
        for line in path.read_text(errors="replace").splitlines()
        if "fast lane" in line.lower() or "berth.lane" in line or "lane:" in line
    ]


# the run ----------------------------------------------------------------------------------
async def main(args: argparse.Namespace) -> None:
    store = "PostgreSQL" if args.database_url else "SQLite"
    lane = "off" if args.no_lane else "on"
    print(
        f"# berth's delivery log through the fast lane: store {store}, BERTH_FAST_LANE={lane}, "
        f"{args.producers} producers over {args.workspaces} workspaces (max_concurrency 4), "
        f"X-Berth-Wait: {args.wait_header}, {args.seconds:g} s x {args.rounds} round(s); "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="berth-lane-log-") as t:
        tmp = Path(t)
        cload, cagent = compile_c(tmp)
        procs = LoggedProcs(tmp)
        dbs = Databases(args.database_url)
        log: Log | None = None
        rounds: list[Round] = []
        try:
            agent, agent_proc = start_agent(procs, cagent)
            extra = await dbs.fresh()
            pg_url = extra.get("BERTH_DATABASE_URL")
            pg_db = pg_url.rsplit("/", 1)[1] if pg_url else None
            data = tmp / "berth"
            sqlite_path = None if pg_url else data / "berth.db"
            took = await seed_finished(args.finished, sqlite_path, pg_url)
            if args.finished:
                print(f"# {args.finished:,} finished deliveries put in the table ({took:.1f} s)")
            if pg_url:
                import asyncpg

                c = await asyncpg.connect(pg_url)
                try:
                    show = {
                        k: await c.fetchval(f"SHOW {k}")
                        for k in ("server_version", "fsync", "synchronous_commit")
                    }
                finally:
                    await c.close()
                print(
                    f"# PostgreSQL {show['server_version']}: fsync {show['fsync']}, "
                    f"synchronous_commit {show['synchronous_commit']}; database {pg_db}"
                )
            berth, berth_proc = start_berth(
                procs,
                data,
                BERTH_FAST_LANE=lane,
                BERTH_LOG_LEVEL="info",  # the lane's lines (none per message)
                **extra,
                # the lane's own knobs, for trying them (berth passes on BERTH_LANE_PG_*)
                **{k: v for k, v in os.environ.items() if k.startswith("BERTH_LANE_PG_")},
            )
            port = int(berth.rsplit(":", 1)[1])
            names = [f"ws-{i}-{os.getpid()}" for i in range(args.workspaces)]
            paths = []
            for name in names:
                url = workspace(berth, name, runtime="external", url=agent, max_concurrency=4)
                paths.append(url.removeprefix(berth))
            m = metrics(berth)
            up = m.get("berth_lane_up")
            kids = ", ".join(f"{comm(k)} pid {k}" for k in children(berth_proc.pid)) or "none"
            print(
                f"# berth pid {berth_proc.pid} (children: {kids}), agent pid {agent_proc.pid}; "
                f"berth_lane_up {'absent (no lane)' if up is None else f'{up:g}'}"
            )
            for line in lane_lines(procs, berth_proc.pid):
                print(f"#   berth: {line}")
            log = Log(sqlite_path, pg_url)
            await log.open()
            if args.warmup > 0:
                w = await one_round(
                    log, berth, berth_proc.pid, agent_proc.pid, pg_db, cload, port, paths,
                    args, args.warmup, tmp,
                )  # fmt: skip
                print(
                    f"# warm-up: {w.load.ok:,} accepted, {w.done:,} done, "
                    f"{w.accepted_rate:,.0f}/s accepted, {w.settled_rate:,.0f}/s settled",
                    flush=True,
                )
            for k in range(1, args.rounds + 1):
                r = await one_round(
                    log, berth, berth_proc.pid, agent_proc.pid, pg_db, cload, port, paths,
                    args, args.seconds, tmp,
                )  # fmt: skip
                rounds.append(r)
                print("\n".join(r.report(k)), flush=True)
            if args.rounds > 1:
                acc = [r.accepted_rate for r in rounds]
                st = [r.settled_rate for r in rounds]
                print(
                    f"== {args.rounds} rounds: accepted {statistics.median(acc):,.0f}/s median "
                    f"({min(acc):,.0f} to {max(acc):,.0f}), settled {statistics.median(st):,.0f}/s "
                    f"median ({min(st):,.0f} to {max(st):,.0f})"
                )
            up = metrics(berth).get("berth_lane_up")
            print(f"# at the end: berth_lane_up {'absent (no lane)' if up is None else f'{up:g}'}")
            await log.close()
            log = None
            # the machine to the floor alone: berth (and its lane) stopped first
            berth_proc.terminate()
            berth_proc.wait(60)
            for line in lane_lines(procs, berth_proc.pid):
                if "flushes" in line:  # the lane's own count, said as it stops
                    print(f"#   berth: {line}")
            if args.database_url and args.floor:
                await floor(dbs, args, rounds)
        finally:
            if log is not None:
                await log.close()
            procs.stop()
            await dbs.drop_all()


async def floor(dbs: Databases, args: argparse.Namespace, rounds: list[Round]) -> None:
    """pgbench running the proxy shape's flush on berth's table (bench/_pg_floor.py), on a
    database of its own: berth's settled/s as a share of it."""
    pgbench = find_pgbench()
    if pgbench is None:
        print("# pgbench not found: no compiled floor")
        return
    url = (await dbs.fresh())["BERTH_DATABASE_URL"]
    from berth.adapters.sql.postgres import PostgresStore

    store = PostgresStore(url)
    await store.migrate()
    await store.close()
    f = await run_floor(
        pgbench,
        url,
        ["floor-0", "floor-1"],
        REQUEST,
        REPLY,
        seconds=max(1.0, args.seconds),
        host_cpu=host_cpu,
    )
    host = "-" if f.host_cpu_us is None else f"{f.host_cpu_us:.0f} us"
    best = statistics.median(r.settled_rate for r in rounds) if rounds else 0.0
    print(
        f"pg C floor: {f.rate:,.0f} deliveries/s settled (pgbench, {f.clients} connections x "
        f"{f.k} settles + {f.k} in-flight accepts a flush, berth's table; a flush "
        f"{f.latency_ms:.2f} ms; host CPU {host} a delivery) -> berth's settled/s "
        f"{best:,.0f} is {best / f.rate * 100:.1f} % of it"
    )


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="load per round")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--producers", type=int, default=8, help="connections in all")
    ap.add_argument("--workspaces", type=int, default=8)
    ap.add_argument(
        "--database-url",
        help="PostgreSQL admin URL (e.g. postgresql://postgres@127.0.0.1:5432/test): berth "
        "on a fresh database created and dropped here; default SQLite",
    )
    ap.add_argument(
        "--finished", type=int, default=0, help="finished 'done' deliveries in the table first"
    )
    ap.add_argument("--wait-header", default="0", help="X-Berth-Wait sent with each message")
    ap.add_argument("--no-lane", action="store_true", help="BERTH_FAST_LANE=off, for comparison")
    ap.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of load before the rounds (0: none)"
    )
    ap.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --database-url: the compiled PostgreSQL floor after berth (bench/_pg_floor.py)",
    )
    args = ap.parse_args()
    if args.rounds < 1 or args.producers < 1 or args.workspaces < 1:
        ap.error("--rounds, --producers and --workspaces must be 1 or more")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse()))
