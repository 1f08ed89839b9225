"""Durable message/send through berth against two baselines measured in the same run.

    python bench/proxy.py [--seconds 5] [--concurrency 1,16,64] [--sync FULL,NORMAL]
                          [--database-url postgresql://…] [--echo] [--ref-src DIR] [--caller]
                          [--lane] [--rounds N]

Starts, each as its own process: a trivial agent (a raw ASGI app answering one fixed
JSON-RPC result, no a2a-sdk: bench/_trivial.py), a bare aiohttp pass-through proxy in
front of it (not durable), the same proxy made minimally durable (each message committed
to SQLite with `synchronous=FULL` before it is forwarded and its answer committed before
the caller is answered, group commit, nothing else: the floor of a durable Python hop on
this machine, SQLite runs only), the same floor written in C (bench/_floor.c, compiled
here with gcc against libsqlite3 when both are present: what a compiled durable hop
costs; and again writing berth's own rows with berth's own two statements, a time-ordered
id and berth's fingerprint per message (src/berth/lane/canon.h): what a compiled data plane for
berth would write),
and one berth per `--sync` value (SQLite's `synchronous`; one
berth on PostgreSQL with `--database-url`, each berth on a database of its own that the
bench creates and drops) with an external workspace on the same agent.
Then drives each with the same closed-loop load at every concurrency, and prints p50,
p99 and msg/s of all, berth's added p50 over the bare proxy, its throughput as a share of
the bare proxy's and its p99 as a multiple of the bare proxy's, and the same three
against the durable floor.

`--ref-src DIR` adds the same berths imported from another checkout's `src/` (the code
before a change), for a before/after in one run. Sends to berth carry the admin token;
`--caller` sends them with a named caller credential the workspace's allow-list names, as
caller agents do (berth reads that credential from its store once, then keeps it:
services/credential_cache.py; before 2026-12-04, once per message).
`--echo` adds the older comparison: berth with the demo echo agent (a2a-sdk, its task
store, the SDK's dedupe) as a workspace vs the same echo agent directly.
`--rounds N` runs every target N times in turn at each concurrency and ends each level
with, for each target, the median and range of its figures against the bare proxy of the
same round: this host's speed moves by a third between minutes, so one pass can put a
target and its baseline in different weather.
Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import Result, run, summary  # noqa: E402

ADMIN = "bench-admin"
AUTH = {"authorization": f"Bearer {ADMIN}"}
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    return {**base, "OTEL_INSTRUMENTATION_A2A_SDK_ENABLED": "false", **extra}


class Procs:
    """Every process the bench starts; each one that does not come up is killed too."""

    def __init__(self) -> None:
        self.all: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], health: str, **extra: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            cmd, env=env(**extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.all.append(proc)
        wait_http(health)
        return proc

    def stop(self) -> None:
        for p in self.all:
            p.terminate()
        for p in self.all:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def start_trivial(procs: Procs) -> tuple[str, str, int]:
    """The trivial agent and the bare proxy in front of it: (agent url, proxy url, its pid)."""
    a, p = free_port(), free_port()
    agent = f"http://127.0.0.1:{a}/"
    procs.start([sys.executable, str(HERE / "_trivial.py"), "agent", "--port", str(a)], agent)
    proxy = procs.start(
        [sys.executable, str(HERE / "_trivial.py"), "proxy", "--port", str(p), "--target", agent],
        f"http://127.0.0.1:{p}/healthz",
    )
    return agent, f"http://127.0.0.1:{p}/", proxy.pid


async def start_c_floors(procs: Procs, agent: str, tmp: Path) -> list[tuple[str, str, int]]:
    """The durable floor in C (bench/_floor.c), compiled now, twice: on a table of its own,
    and writing berth's own rows with berth's own statements ("berth rows"): [(label, url,
    pid)]; none (said why) when there is no C compiler, SQLite or OpenSSL header here."""
    exe = _compile_floor(tmp)
    if exe is None:
        return []
    agent_port = agent.rstrip("/").rsplit(":", 1)[1]
    out = []
    for label, extra in (("durable floor in C", []), ("C floor, berth rows", [berth_sql(tmp)])):
        p = free_port()
        db = tmp / f"floor-c-{len(out)}.db"
        if extra:
            await _berth_schema(db)
        proc = procs.start(
            [str(exe), str(p), agent_port, str(db), *extra], f"http://127.0.0.1:{p}/healthz"
        )
        out.append((label, f"http://127.0.0.1:{p}/", proc.pid))
    return out


def _compile_floor(tmp: Path) -> Path | None:
    exe = tmp / "floor"
    cc = ["gcc", "-O2", "-o", str(exe), str(HERE / "_floor.c")]
    try:
        subprocess.run([*cc, "-lsqlite3", "-lpthread", "-lcrypto"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        why = getattr(e, "stderr", b"") or str(e).encode()
        print(f"# no C floor: {why.decode(errors='replace').strip()[:200]}")
        return None
    return exe


async def _berth_schema(db: Path) -> None:
    from berth.adapters.sql.sqlite import SqliteStore

    store = SqliteStore(str(db))
    await store.migrate()
    await store.close()


def berth_sql(tmp: Path) -> str:
    """The C floor's berth statements, a line each: the in-flight accept as berth runs it
    (adapters/sql/sqlite_hot.py) and the settle of a replied message as
    adapters/sql/sqlite_deliveries.py words it (its named parameters made positional)."""
    from berth.adapters.sql import rows, sqlite_hot

    assert rows.D_COLUMNS[0] == "id" and rows.D_COLUMNS[-1] == "updated_at"  # _floor.c binds
    assert len(rows.D_COLUMNS) == 23  # the columns in this order (bind_berth_accept)
    settle = (
        "UPDATE deliveries SET status = 'done', attempts = attempts + 1, reason = NULL, "
        "not_before = 0, lease_owner = NULL, lease_until = NULL, updated_at = ?1, "
        "finished_at = ?1, reply = ?2, reply_status = 200, reply_type = 'application/json' "
        f"WHERE id = ?3 AND status = '{rows.IN_FLIGHT}' AND lease_owner = ?4 "
        "AND (?5 IS NULL OR forwards = ?5) RETURNING *"
    )
    path = tmp / "berth.sql"
    path.write_text(sqlite_hot._IN_FLIGHT_SQL.replace("\n", " ") + "\n" + settle + "\n")
    return str(path)


def start_durable(procs: Procs, agent: str, db: Path) -> tuple[str, int]:
    """The bare proxy made minimally durable (bench/_trivial.py durable): (url, pid)."""
    p = free_port()
    cmd = [sys.executable, str(HERE / "_trivial.py"), "durable", "--port", str(p)]
    proc = procs.start([*cmd, "--target", agent, "--db", str(db)], f"http://127.0.0.1:{p}/healthz")
    return f"http://127.0.0.1:{p}/", proc.pid


def start_berth(procs: Procs, data: Path, **extra: str) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    # the interpreter may live where berth's agent user cannot reach: agents run as berth's user
    extra = {
        "BERTH_ADMIN_TOKEN": ADMIN,
        "BERTH_LOG_LEVEL": "warning",
        "BERTH_AGENT_USER": "inherit",
        # berth's Python path unless the caller asks for the lane (BERTH_FAST_LANE's default,
        # auto, would put the lane in front of every berth measured here)
        "BERTH_FAST_LANE": "off",
        **extra,
    }
    url = f"http://127.0.0.1:{port}"
    proc = procs.start(
        [sys.executable, "-m", "berth", "serve", "--port", str(port), "--data-dir", str(data)],
        url + "/healthz",
        **extra,
    )
    return url, proc


class Databases:
    """With --database-url: a database of its own for each berth, created and dropped here.
    Two berths on one database would be two replicas of one log without the Redis bus that
    tells each at once what the other settled."""

    def __init__(self, admin_url: str | None) -> None:
        self.admin_url = admin_url
        self.made: list[str] = []

    async def _admin(self, sql: str) -> None:
        import asyncpg

        c = await asyncpg.connect(self.admin_url)
        try:
            await c.execute(sql)
        finally:
            await c.close()

    async def fresh(self) -> dict[str, str]:
        """The environment that points a berth at a new database ({} without PostgreSQL)."""
        if not self.admin_url:
            return {}
        from urllib.parse import urlsplit, urlunsplit

        db = f"berth_proxy_{os.getpid()}_{len(self.made)}"
        await self._admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await self._admin(f'CREATE DATABASE "{db}"')
        self.made.append(db)
        url = urlunsplit(urlsplit(self.admin_url)._replace(path="/" + db))
        return {"BERTH_DATABASE_URL": url}

    async def drop_all(self) -> None:
        for db in self.made:
            await self._admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def caller_credential(berth: str, name: str) -> str:
    """A new named caller credential (`caller:<name>`): its secret."""
    r = httpx.post(berth + "/v1/credentials", headers=AUTH, json={"name": name})
    r.raise_for_status()
    secret: str = r.json()["secret"]
    return secret


def workspace(berth: str, name: str, **spec: object) -> str:
    r = httpx.post(berth + "/v1/workspaces", headers=AUTH, json={"name": name, **spec})
    r.raise_for_status()
    for _ in range(600):
        if httpx.get(f"{berth}/v1/workspaces/{name}", headers=AUTH).json()["status"] == "online":
            return f"{berth}/v1/workspaces/{name}/a2a"
        time.sleep(0.1)
    raise RuntimeError(f"workspace {name} did not come online")


def compare(label: str, bare: Result, via: Result, what: str = "the bare proxy") -> str:
    return (
        f"  -> {label}: added p50 over {what} {via.pct(50) - bare.pct(50):+.2f} ms, "
        f"throughput {via.rps / bare.rps * 100:5.1f} % of {what}'s, "
        f"p99 {via.pct(99) / bare.pct(99):.2f}x {what}'s"
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children so far (Linux): berth with
    its fast lane is two processes."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def measured(
    label: str, url: str, c: int, seconds: float, headers: dict[str, str], pid: int
) -> Result:
    """A run, printed with the CPU time the server process spent per message (robust to
    the machine's other load, unlike latency)."""
    start: list[float] = []
    r = await run(label, url, c, seconds, headers, on_start=lambda: start.append(cpu_seconds(pid)))
    cpu = (cpu_seconds(pid) - start[0]) / max(1, r.n) * 1000
    print(f"{r.row()}   cpu {cpu:.3f} ms/msg")
    return r


async def trivial(args: argparse.Namespace, tmp: Path, procs: Procs, dbs: Databases) -> None:
    agent, bare, bare_pid = start_trivial(procs)
    floor = None if args.database_url else start_durable(procs, agent, tmp / "floor.db")
    c_floors = [] if args.database_url else await start_c_floors(procs, agent, tmp)
    berths: list[tuple[str, str, int, dict[str, str]]] = []
    variants = ["postgresql"] if args.database_url else args.sync.split(",")
    sources = [("", None)] + ([("ref ", args.ref_src)] if args.ref_src else [])
    runs = [(v, s, False) for s in sources for v in variants]
    if args.lane:
        runs.insert(0, (variants[0], ("", None), True))
    for i, (sync, (tag, src), lane) in enumerate(runs):
        extra = await dbs.fresh()
        if lane:
            extra["BERTH_FAST_LANE"] = "on"
        if not args.database_url:
            extra["BERTH_SQLITE_SYNCHRONOUS"] = sync
        if src:
            extra["PYTHONPATH"] = src
        url, proc = start_berth(procs, tmp / f"berth-{i}", **extra)
        spec: dict[str, object] = {"runtime": "external", "url": agent, "max_concurrency": 64}
        headers = AUTH
        if args.caller:  # as a caller agent sends: its credential, read by berth per message
            headers = {"authorization": f"Bearer {caller_credential(url, 'bench')}"}
            spec["allowed_callers"] = ["caller:bench"]
        label = f"{tag}berth ({sync}{', fast lane' if lane else ''})"
        ws_url = workspace(url, f"trivial-{i}-{os.getpid()}", **spec)
        berths.append((label, ws_url, proc.pid, headers))
    print(
        f"# trivial agent: {os.cpu_count()} cores, {args.seconds:g} s per run; "
        + ("a caller credential per berth; " if args.caller else "the admin token; ")
        + ", ".join(f"{label} pid {pid}" for label, _, pid, _ in berths)
    )
    for c in args.levels:
        paired: dict[str, list[tuple[Result, Result]]] = {}  # label -> (bare, it) per round
        for k in range(args.rounds):
            if args.rounds > 1:
                print(f"# c={c}: round {k + 1} of {args.rounds}")
            direct = await run("direct to the agent", agent, c, args.seconds, {})
            print(direct.row())
            plain = await measured("bare aiohttp proxy", bare, c, args.seconds, {}, bare_pid)
            least = None
            if floor is not None:
                least = await measured(
                    "durable floor (FULL)", floor[0], c, args.seconds, {}, floor[1]
                )
                print(compare("durable floor", plain, least))
                paired.setdefault("durable floor (FULL)", []).append((plain, least))
            for c_label, c_url, c_pid in c_floors:
                compiled = await measured(c_label, c_url, c, args.seconds, {}, c_pid)
                print(compare(c_label, plain, compiled))
                paired.setdefault(c_label, []).append((plain, compiled))
            for label, url, pid, headers in berths:
                via = await measured(label, url, c, args.seconds, headers, pid)
                print(compare(label, plain, via))
                if least is not None:
                    print(compare(label, least, via, "the durable floor"))
                paired.setdefault(label, []).append((plain, via))
        if args.rounds > 1:
            for label, pairs in paired.items():
                print(over_rounds(label, c, pairs))


def over_rounds(label: str, c: int, pairs: list[tuple[Result, Result]]) -> str:
    """Each round's figures against the bare proxy of the same round (the host's speed moves
    between minutes, less within a round): their median, and their range."""
    share = [via.rps / bare.rps * 100 for bare, via in pairs]
    added = [via.pct(50) - bare.pct(50) for bare, via in pairs]
    tail = [via.pct(99) / bare.pct(99) for bare, via in pairs]

    def span(xs: list[float], fmt: str) -> str:
        return (
            f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))} to {fmt.format(max(xs))})"
        )

    return (
        f"  == {label}, c={c}, {len(pairs)} rounds, each beside its round's bare proxy: "
        f"throughput {span(share, '{:.1f} %')}, added p50 {span(added, '{:+.2f} ms')}, "
        f"p99 {span(tail, '{:.2f}x')}"
    )


def start_echo(procs: Procs, tmp: Path) -> str:
    """The demo echo agent (a2a-sdk, its task store, the SDK's records), on its own."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    procs.start(
        [sys.executable, "-m", "berth.examples.echo", "--port", str(port)],
        url + "healthz",
        BERTH_STATE_DIR=str(tmp / "direct-state"),
    )
    return url


async def echo_via_berth(procs: Procs, tmp: Path, dbs: Databases) -> str:
    """A berth with an echo workspace: its proxy URL."""
    berth, _ = start_berth(procs, tmp / "berth-echo", **await dbs.fresh())
    spec = {"command": [sys.executable, "-m", "berth.examples.echo"], "max_concurrency": 64}
    return workspace(berth, f"bench-echo-{os.getpid()}", **spec)


async def echo(args: argparse.Namespace, tmp: Path, procs: Procs, dbs: Databases) -> None:
    direct_url = start_echo(procs, tmp)
    url = await echo_via_berth(procs, tmp, dbs)
    print("# echo agent (a2a-sdk): direct vs via berth")
    for c in [x for x in args.levels if x <= 16]:
        direct = await run("direct to echo", direct_url, c, args.seconds, {})
        print(direct.row())
        via = await run("via berth", url, c, args.seconds, AUTH)
        print(via.row())
        print(summary(direct, via))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--database-url")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--sync", default="FULL", help="SQLite synchronous values, one berth each")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every target this many times, in turn, at each concurrency; print each "
        "one's median and range against the bare proxy of the same round",
    )
    ap.add_argument("--echo", action="store_true", help="also the echo-agent comparison")
    ap.add_argument(
        "--ref-src", help="also berth imported from another checkout's src/ (before/after)"
    )
    ap.add_argument(
        "--lane", action="store_true", help="also a berth with its fast lane on (docs/fast-lane.md)"
    )
    ap.add_argument(
        "--caller",
        action="store_true",
        help="send to berth with a caller credential (as caller agents do), not the admin token",
    )
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be 1 or more")
    args.levels = [int(x) for x in args.concurrency.split(",")]
    store = "postgresql" if args.database_url else "sqlite"
    print(f"# berth proxy benchmark: store {store}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as t:
        procs = Procs()
        dbs = Databases(args.database_url)
        try:
            await trivial(args, Path(t), procs, dbs)
            if args.echo:
                await echo(args, Path(t), procs, dbs)
        finally:
            procs.stop()
            await dbs.drop_all()


if __name__ == "__main__":
    asyncio.run(main())
