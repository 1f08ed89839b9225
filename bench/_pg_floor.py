"""The compiled floor of berth's flush on PostgreSQL: pgbench (C, libpq) running, on the
bench's own database and berth's own table and indexes, what one flush of berth's proxy
shape writes: the settles of the deliveries of the flush before (UPDATE ... to done, with
a reply) and the accepts of new ones written in flight, in one statement and one commit.

Two connections (berth's two lanes), each with its own workspace, k deliveries a flush,
prepared statements (`-M prepared`, as berth's plans are cached): no Python, no asyncpg,
no event loop. Also none of berth_write's checks: no capacity check or advisory lock, the
settles pick their rows through the in-flight index where berth looks each one up by id
(`FOR UPDATE NOWAIT`, checking its lease), and no rows are returned. What berth adds on
top of it is mostly what one Python process costs around each flush (docs/benchmarks.md,
"What bounds berth's own shape on PostgreSQL")."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Floor", "find_pgbench", "run_floor"]


@dataclass
class Floor:
    clients: int
    k: int
    rate: float  # deliveries settled per second
    latency_ms: float  # a flush's statement, as pgbench measured it
    host_cpu_us: float | None  # the whole host's CPU per delivery (pgbench's own included)


def find_pgbench() -> str | None:
    """pgbench on PATH, else beside the server's binaries (Debian keeps it there)."""
    found = shutil.which("pgbench")
    if found:
        return found
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        candidate = Path(out.stdout.strip()) / "pgbench"
        if out.returncode == 0 and candidate.is_file():
            return str(candidate)

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in p.parts[-3].split(".") if x.isdigit())

    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), key=version)
    return str(versions[-1]) if versions else None


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def script(workspaces: list[str], request: str, reply: str) -> str:
    """One flush per transaction: k settles of this client's workspace's oldest deliveries
    in flight, k accepts written in flight (as berth's accept_claim writes them: ids laid
    out as UUID version 7, time first, as domain/ids.py makes them; the accept key's
    conflict ignored)."""
    ws = "(ARRAY[" + ", ".join(_literal(w) for w in workspaces) + "])[1 + :client_id]"
    now = "extract(epoch from clock_timestamp())"
    # 12 hex of milliseconds, a version nibble, 19 random hex: 8-4-4-4-12
    hexid = (
        "lpad(to_hex(floor(extract(epoch from clock_timestamp()) * 1000)::bigint), 12, '0') "
        "|| '7' || substr(md5(random()::text || g), 1, 19)"
    )
    uuid7 = (
        "substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-' || substr(h, 13, 4) || '-' || "
        "substr(h, 17, 4) || '-' || substr(h, 21, 12)"
    )
    return f"""WITH s AS (
  UPDATE deliveries AS x SET status = 'done', attempts = x.attempts + 1, lease_owner = NULL,
      lease_until = NULL, finished_at = {now}, updated_at = {now},
      reply = convert_to({_literal(reply)}, 'UTF8'), reply_status = 200,
      reply_type = 'application/json'
  WHERE seq IN (SELECT seq FROM deliveries WHERE status = 'in_flight' AND workspace_id = {ws}
                ORDER BY seq LIMIT :k FOR UPDATE SKIP LOCKED)
  RETURNING x.seq
), i AS (
  INSERT INTO deliveries (id, workspace_id, caller, message_id, method, request, headers, status,
      attempts, forwards, lease_owner, lease_until, not_before, created_at, first_forwarded_at,
      updated_at)
  SELECT {uuid7}, {ws}, 'operator', gen_random_uuid()::text, 'SendMessage',
      convert_to({_literal(request)}, 'UTF8'), '{{"a2a-version": "1.0"}}', 'in_flight', 0, 1,
      'pgbench', {now} + 30, 0, {now}, {now}, {now}
  FROM generate_series(1, :k) AS g, LATERAL (SELECT {hexid} AS h) AS v
  ON CONFLICT (workspace_id, caller, message_id) DO NOTHING
  RETURNING seq
) SELECT (SELECT count(*) FROM s), (SELECT count(*) FROM i);
"""


async def run_floor(
    pgbench: str,
    url: str,
    workspaces: list[str],
    request: str,
    reply: str,
    *,
    seconds: float,
    clients: int = 2,
    k: int = 4,
    host_cpu: Callable[[], tuple[int, int, int]] | None = None,
) -> Floor:
    """pgbench for `seconds` (whole seconds, at least 1); `host_cpu`: the bench's reader of
    the host's CPU, called before and after (the database's own backends exit with pgbench,
    before their CPU could be read)."""
    if clients > len(workspaces):
        raise ValueError("one workspace per connection")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="berth-floor-") as f:
        f.write(script(workspaces[:clients], request, reply))
        f.flush()
        h0 = host_cpu() if host_cpu else None
        proc = await asyncio.create_subprocess_exec(
            pgbench, "-n", "-M", "prepared", "-c", str(clients), "-j", str(clients),
            "-T", str(max(1, round(seconds))), "-D", f"k={k}", "-f", f.name, url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        h1 = host_cpu() if host_cpu else None
    text = out.decode()
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed ({proc.returncode}): {err.decode()[-1500:]}")
    tps = re.search(r"^tps = ([\d.]+)", text, re.M)
    lat = re.search(r"^latency average = ([\d.]+) ms", text, re.M)
    txs = re.search(r"^number of transactions actually processed: (\d+)", text, re.M)
    if not (tps and lat and txs):
        raise RuntimeError(f"pgbench's report was not understood: {text[-1500:]}")
    delivered = int(txs[1]) * k
    host = None
    if delivered and h0 is not None and h1 is not None and h1[2] > h0[2]:
        busy = (h1[0] - h0[0]) - (h1[1] - h0[1])  # steal is another guest's time
        host = busy / os.sysconf("SC_CLK_TCK") / delivered * 1e6
    return Floor(clients, k, float(tps[1]) * k, float(lat[1]), host)
