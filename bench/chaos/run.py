"""Run a chaos experiment end to end and print its summary (see docs/reliability.md).

    python -m bench.chaos --duration 120 --faults restart=20,agent_kill=4,berth_kill=1
    python -m bench.chaos --replicas 3 --external 3 --faults replica_kill=20,redis_restart=5,...

Exit status: 0 when the checker found no violation, 1 when it found some, 2 when the run
itself could not be carried out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.chaos import cluster as cl
from bench.chaos import overload
from bench.chaos.checker import check, parse_executions
from bench.chaos.faults import KINDS, Faults
from bench.chaos.history import History
from bench.chaos.load import Load, reply_text
from bench.chaos.report import recheck, summary

__all__ = ["main", "parse_args"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--duration", type=float, default=120, help="seconds of load and faults (at most)"
    )
    ap.add_argument(
        "--faults",
        default="restart=10,agent_kill=3,berth_kill=1",
        help=f"KIND=N,... with KIND in {', '.join(KINDS)}; the run ends early when all are reached",
    )
    ap.add_argument("--rate", type=float, default=10.0, help="messages started per second")
    ap.add_argument("--workspaces", type=int, default=4, help="process workspaces (SQLite) ")
    ap.add_argument(
        "--external", type=int, default=0, help="external workspaces behind chaos proxies"
    )
    ap.add_argument(
        "--replicas",
        type=int,
        default=0,
        help="0 = one berth on SQLite; N = N replicas on PostgreSQL + Redis",
    )
    ap.add_argument("--drain-seconds", type=float, default=1.0)
    ap.add_argument("--long-max", type=float, default=3.0, help="longest `sleep:` message, seconds")
    ap.add_argument(
        "--lease-seconds", type=float, default=None, help="BERTH_LEASE_SECONDS of the replicas"
    )
    ap.add_argument(
        "--start-timeout",
        type=float,
        default=None,
        help="BERTH_START_TIMEOUT of the berths (berth's default 30 s; a loaded machine needs more)",
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=180,
        help="seconds callers keep retrying after the faults stop",
    )
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keeps the history, logs, data (default: a temp dir)",
    )
    ap.add_argument(
        "--overload",
        action="store_true",
        help="callers send faster than the agents drain: queue limits, 429s (overload.py)",
    )
    ap.add_argument(
        "--max-queue", type=int, default=20, help="overload: each workspace's max_queue"
    )
    ap.add_argument(
        "--max-queue-age", type=float, default=10.0, help="overload: each one's max_queue_age, s"
    )
    ap.add_argument(
        "--work", type=float, default=0.3, help="overload: seconds of agent work per message"
    )
    ap.add_argument(
        "--refusals", type=int, default=3, help="overload: a caller gives up after this many 429s"
    )
    path = ap.add_mutually_exclusive_group()
    path.add_argument(
        "--lane",
        action="store_true",
        help="berth with its fast lane on (BERTH_FAST_LANE=on; SQLite, or each PostgreSQL "
        "replica's; docs/fast-lane.md). Without this flag berth runs its default: on SQLite, "
        "the lane where it builds; on PostgreSQL, none",
    )
    path.add_argument(
        "--no-lane", action="store_true", help="berth's Python server alone (BERTH_FAST_LANE=off)"
    )
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument(
        "--recheck",
        type=Path,
        default=None,
        metavar="WORKDIR",
        help="check a finished run's history and agent logs again (nothing is run)",
    )
    return ap.parse_args(argv)


def _targets(spec: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        k, _, v = part.partition("=")
        out[k.strip()] = int(v)
    return out


def _specs(a: argparse.Namespace) -> list[cl.WsSpec]:
    specs = []
    conc = [1, 4, 1, 2]  # half of them max_concurrency 1, where order is checked
    limits = {"max_queue": a.max_queue, "max_queue_age": a.max_queue_age} if a.overload else {}
    for i in range(a.workspaces):
        specs.append(cl.WsSpec(f"p{i}", "process", conc[i % 4], a.drain_seconds, limits))
    for i in range(a.external):
        specs.append(cl.WsSpec(f"x{i}", "external", conc[i % 4], a.drain_seconds, limits))
    return specs


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def run(a: argparse.Namespace) -> int:
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="berth-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    targets = _targets(a.faults)
    history = History(workdir / "history.jsonl")
    cluster = cl.Cluster(
        workdir,
        _specs(a),
        replicas=a.replicas,
        postgres=a.postgres,
        redis=a.redis,
        lease_seconds=a.lease_seconds,
        extra_env={
            **({} if a.start_timeout is None else {"BERTH_START_TIMEOUT": str(a.start_timeout)}),
            **(
                {"BERTH_FAST_LANE": "on"}
                if a.lane
                else {"BERTH_FAST_LANE": "off"}
                if a.no_lane
                else {}
            ),
        },
    )
    say(f"workdir {workdir}")
    clients: list[httpx.AsyncClient] = []
    load: Load | None = None
    started = time.time()
    try:
        await cluster.start()
        for w in cluster.workspaces.values():
            history.add(
                {
                    "type": "workspace",
                    "ws": w.spec.name,
                    "runtime": w.spec.runtime,
                    "max_concurrency": w.spec.max_concurrency,
                }
            )
        clients = [cluster.client(i, timeout=120) for i in range(len(cluster.berths))]
        load = Load(
            history,
            clients,
            list(cluster.workspaces),
            rate=a.rate,
            long_max=a.long_max,
            seed=a.seed,
            alive=lambda i: cluster.berths[i].alive,
            work=a.work if a.overload else None,
            refusals_max=a.refusals if a.overload else None,
        )
        faults = Faults(history, cluster, targets, seed=a.seed, log=say)
        stop = asyncio.Event()
        say(f"load {a.rate}/s on {len(cluster.workspaces)} workspaces; faults {targets}")
        sender = asyncio.create_task(load.run(stop))
        reporter = asyncio.create_task(_progress(load, faults))
        sampled = asyncio.Event()
        sampler = asyncio.create_task(
            overload.sample(clients[0], history, sampled) if a.overload else sampled.wait()
        )
        await faults.run(started + a.duration) if targets else await asyncio.sleep(a.duration)
        stop.set()
        await sender
        reporter.cancel()
        say(
            f"faults done {faults.done}; healing, then settling (callers retry up to {a.settle:.0f} s)"
        )
        await _heal(cluster, history)
        await load.settle(time.time() + a.settle)
        await _quiesce(cluster, a.settle)
        sampled.set()
        await sampler
        stale = await _stale_restarts(cluster)
        executions = _executions(cluster, history)
        finals = await _final_reads(cluster, history)
        say(f"final reads: {finals}")
        report = check(history.records, executions)
        text = summary(report, a, targets, time.time() - started, load.sent)
        if a.lane or (not a.no_lane and not a.replicas):  # the lane, where berth runs one
            text += await _lane_counts(clients)
        if stale:
            text += (
                f"\nobserved: {len(stale)} restart records never finished (their berth was "
                f"killed mid-cycle), e.g. {stale[:3]}\n"
            )
        print(text, flush=True)
        (workdir / "summary.txt").write_text(text)
        return 0 if report.ok else 1
    finally:
        if a.replicas:
            cl.services_up()  # whatever happened, leave them running (blocking: cannot be cut)
        if load is not None:  # interrupted: stop the callers before their clients close
            for t in list(load.tasks):
                t.cancel()
            await asyncio.gather(*load.tasks, return_exceptions=True)
        for c in clients:
            await c.aclose()
        try:
            await asyncio.wait_for(cluster.close(), 120)
        except BaseException:  # interrupted again, or stuck: the blocking way
            cluster.terminate()
            raise
        finally:
            cluster.terminate()  # a no-op when close() did its work
        history.close()


async def _lane_counts(clients: list[httpx.AsyncClient]) -> str:
    """What the fast lanes served themselves and handed to Python (metrics count from each
    berth's last start, summed over the replicas): a lane run where the lane served nothing
    proves nothing."""
    served = handed = 0.0
    for c in clients:
        try:
            text = (await c.get("/metrics")).text
        except httpx.HTTPError:
            continue
        for line in text.splitlines():
            if line.startswith("berth_lane_deliveries_total{"):
                served += float(line.rsplit(" ", 1)[1])
            elif line.startswith("berth_lane_handoffs_total{"):
                handed += float(line.rsplit(" ", 1)[1])
    return (
        f"\nfast lane (since its berth's last start): {served:.0f} sends served by the lane, "
        f"{handed:.0f} handed to Python\n"
    )


async def _progress(load: Load, faults: Faults) -> None:
    while True:
        await asyncio.sleep(30)
        say(f"sent {load.sent}, callers open {len(load.tasks)}, faults {faults.done}")


async def _heal(cluster: cl.Cluster, history: History) -> None:
    """Everything back: services, berths, proxies passing, agents running, workspaces online."""
    if cluster.replicated:
        await asyncio.to_thread(cl.services_up)
    await cluster.ensure_berths()
    for w in cluster.workspaces.values():
        if w.proxy is not None:
            w.proxy.mode = "pass"
    cluster.agents_alive()
    async with cluster.client(0) as c:
        for name in cluster.workspaces:
            try:
                await cluster.wait_online(c, name, 20)
                continue
            except RuntimeError:
                pass
            info = (await c.get(f"/v1/workspaces/{name}")).json()
            t0 = time.time()
            r = await c.post(f"/v1/workspaces/{name}/restart", json={"reason": "chaos heal"})
            history.fault(
                "heal",
                name,
                t0,
                ok=r.status_code == 202,
                detail=f"{info.get('status')} 20 s after the faults: {info.get('last_error')}",
            )
            await cluster.wait_online(c, name, 120)


async def _quiesce(cluster: cl.Cluster, timeout: float) -> None:
    """Wait until no workspace has anything queued or in flight."""
    deadline = time.time() + timeout
    async with cluster.client(0) as c:
        while time.time() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                ws = (await c.get("/v1/workspaces")).json()["workspaces"]
                if all(w.get("queue_depth", 0) == 0 and w.get("in_flight", 0) == 0 for w in ws):
                    return
            await asyncio.sleep(1)


async def _stale_restarts(cluster: cl.Cluster) -> list[str]:
    """Restart records still not done/failed once everything is quiet (ws:phase)."""
    out = []
    async with cluster.client(0) as c:
        for name in cluster.workspaces:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                recs = (await c.get(f"/v1/workspaces/{name}/restarts?limit=500")).json()
                out += [
                    f"{name}:{r['phase']}"
                    for r in recs["restarts"]
                    if r["phase"] not in ("done", "failed")
                ]
    return out


def _executions(cluster: cl.Cluster, history: History) -> dict[str, list[tuple[str, str]]]:
    """Each workspace's agent log. A process workspace's state dir lives in the data dir of
    the replica that runs it: every replica's is read, and more than one is recorded (the
    checker calls two agents of one workspace a violation)."""
    out = {}
    for name, w in cluster.workspaces.items():
        if w.spec.runtime == "external":
            paths = [(w.state_dir or Path("/nonexistent")) / "executions.log"]
        else:
            paths = sorted(
                cluster.workdir.glob(f"berth-*/workspaces/{w.id}/state/executions.log"),
                key=lambda p: p.stat().st_mtime,
            )
        paths = [p for p in paths if p.exists()]
        history.add({"type": "agents", "ws": name, "logs": [str(p) for p in paths]})
        out[name] = [line for p in paths for line in parse_executions(p.read_text())]
    return out


async def _final_reads(cluster: cl.Cluster, history: History) -> dict[str, int]:
    """Per message: its delivery as berth has it now (GET /v1/deliveries/{id}); a message whose
    caller never learnt its delivery id is looked up by sending it again with X-Berth-Wait: 0
    (an older delivery found that way existed before; a new one means it was never accepted)."""
    msgs: dict[tuple[str, str], dict[str, Any]] = {}
    for r in history.records:
        if r.get("type") == "call":
            m = msgs.setdefault(
                (r["ws"], r["mid"]), {"text": r["text"], "ids": set(), "t0": r["t0"]}
            )
            if r.get("delivery_id"):
                m["ids"].add(r["delivery_id"])
    sem = asyncio.Semaphore(16)
    stats = {"by_id": 0, "by_resend": 0, "never_accepted": 0, "split": 0}

    async def one(c: httpx.AsyncClient, ws: str, mid: str, m: dict[str, Any]) -> None:
        async with sem:
            ids = sorted(m["ids"])
            if len(ids) > 1:
                stats["split"] += 1  # the checker reports it
            if not ids:
                body = {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "SendMessage",
                    "params": {
                        "message": {
                            "role": "ROLE_USER",
                            "messageId": mid,
                            "parts": [{"text": m["text"]}],
                        }
                    },
                }
                t_read = time.time()
                r = await c.post(
                    f"/v1/workspaces/{ws}/a2a",
                    json=body,
                    headers={"a2a-version": "1.0", "x-berth-wait": "0"},
                )
                if r.status_code == 429:  # refused: berth never refuses one it has accepted
                    stats["never_accepted"] += 1
                    history.add(
                        {"type": "final", "ws": ws, "mid": mid, "delivery": None, "via": "resend"}
                    )
                    return
                did = r.headers.get("x-berth-delivery-id") or r.json().get("delivery_id")
                d = (await c.get(f"/v1/deliveries/{did}")).json()
                if d["created_at"] >= t_read - 0.001:
                    stats["never_accepted"] += 1
                    await c.post(f"/v1/deliveries/{did}/cancel")
                    history.add(
                        {"type": "final", "ws": ws, "mid": mid, "delivery": None, "via": "resend"}
                    )
                    return
                stats["by_resend"] += 1
                ids = [did]
            else:
                stats["by_id"] += 1
            r = await c.get(f"/v1/deliveries/{ids[0]}")
            d = r.json() if r.status_code == 200 else None
            if d is not None:
                d["reply_text"] = reply_text(d.get("reply")) if d["status"] == "done" else None
                d.pop("reply", None)
            history.add({"type": "final", "ws": ws, "mid": mid, "delivery": d})

    async def patiently(c: httpx.AsyncClient, ws: str, mid: str, m: dict[str, Any]) -> None:
        for attempt in range(5):
            try:
                return await one(c, ws, mid, m)
            except (httpx.HTTPError, ValueError, KeyError):
                if attempt == 4:
                    raise
                await asyncio.sleep(2)

    async with cluster.client(0, timeout=60) as c:
        await asyncio.gather(*(patiently(c, ws, mid, m) for (ws, mid), m in msgs.items()))
    return stats


async def _run_stoppable(a: argparse.Namespace) -> int:
    """run(), cancelled cleanly (berths stopped, agents stopped, services up) on SIGTERM."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run(a)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.recheck is not None:
        return recheck(a)
    try:
        return asyncio.run(_run_stoppable(a))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("chaos run interrupted", file=sys.stderr, flush=True)
        return 2
    except Exception as e:  # the run itself failed: say so, distinctly from a violation
        print(f"chaos run failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 2
