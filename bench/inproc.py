"""berth's message path in process, without its HTTP server: CPU per message of the loop.

    python bench/inproc.py [--concurrency 64] [--n 10000] [--profile FILE] [--ref-src DIR]

Builds a berth (SQLite, `synchronous=FULL`, as `berth serve` does) in this process under
uvloop, with an external workspace on the trivial agent (bench/_trivial.py, a subprocess,
reached over HTTP as usual), and calls `Proxy.handle` from `--concurrency` tasks, one send
after another each, `--n` sends after a warm-up. Prints sends per second and the loop
thread's CPU per send: the cost of the delivery log's path (accept and claim, group
commit, the forward, the settle, the waiter) with uvicorn and the HTTP request out of
the figure. `--profile FILE` writes a cProfile of the measured sends (thread CPU clock).
`--ref-src DIR` runs the same in a child process importing berth from another checkout's
`src/`, after this one (a before/after in one sitting). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy as bench  # noqa: E402

BODY = (
    b'{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":{"role":"ROLE_USER",'
    b'"messageId":"%s","parts":[{"text":"bench"}]}}}'
)


async def measure(concurrency: int, n: int, profile: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="berth-inproc-") as data:
        await _measure(Path(data), concurrency, n, profile)


async def _measure(data: Path, concurrency: int, n: int, profile: str | None) -> None:
    procs = bench.Procs()
    port = bench.free_port()
    agent = f"http://127.0.0.1:{port}/"
    trivial = [sys.executable, str(bench.HERE / "_trivial.py"), "agent", "--port", str(port)]
    procs.start(trivial, agent)
    os.environ.update(
        BERTH_DATA_DIR=str(data),
        BERTH_ADMIN_TOKEN=bench.ADMIN,
        BERTH_LOG_LEVEL="warning",
    )
    from berth.bootstrap import build
    from berth.settings import Settings

    sys.setswitchinterval(0.0005)  # as `berth serve`
    c = build(Settings.from_env())
    await c.start()
    try:
        spec = {"name": "inproc", "runtime": "external", "url": agent, "max_concurrency": 64}
        await c.workspaces.create(spec)
        for _ in range(300):
            ws = await c.roster.get("inproc")
            if getattr(ws.state, "value", ws.state) == "online":
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("the workspace did not come online")
        headers = {"content-type": "application/json", "a2a-version": "1.0"}
        left = 0

        async def caller() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                raw = BODY % str(uuid.uuid4()).encode()
                reply = await c.proxy.handle(ws, raw, headers)
                if reply.status != 200:
                    raise RuntimeError(f"send answered {reply.status}: {reply.body[:200]!r}")

        left = 500
        await asyncio.gather(*(caller() for _ in range(concurrency)))  # warm-up
        left = n
        gc.collect()
        prof = cProfile.Profile(time.thread_time) if profile else None
        cpu, wall = time.thread_time(), time.perf_counter()
        if prof:
            prof.enable()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        if prof:
            prof.disable()
            prof.dump_stats(profile)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        src = Path(sys.modules["berth"].__file__ or "?").parent.parent
        print(
            f"berth from {src}: c={concurrency} n={n}: {n / wall:,.0f} sends/s, "
            f"loop-thread CPU {cpu / n * 1e6:.1f} us per send"
        )
    finally:
        await c.stop()
        procs.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--profile")
    ap.add_argument("--ref-src")
    args = ap.parse_args()
    import uvloop

    uvloop.install()
    asyncio.run(measure(args.concurrency, args.n, args.profile))
    if args.ref_src:
        cmd = [sys.executable, __file__, "--concurrency", str(args.concurrency), "--n", str(args.n)]
        env = {**os.environ, "PYTHONPATH": args.ref_src}
        subprocess.run(cmd, env=env, check=True)


if __name__ == "__main__":
    main()
