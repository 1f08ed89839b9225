"""Suspended workspaces: how many one berth holds, with what memory, and how fast one wakes.

    python bench/idle.py [--workspaces 20] [--batch 4] [--wakes 5] [--image berth-echo:local]

One `berth serve` (SQLite, process runtime). Creates `--workspaces` echo workspaces with
idle_suspend_seconds 1, `--batch` at a time (each starts its agent, which then suspends),
and prints berth's resident memory before and after, and the agent processes left running
(none: a suspended workspace costs berth a row and a roster entry). Then wakes `--wakes` of
them one by one: the time from send to reply of a message to a suspended workspace, beside
the same message to the (now online) workspace right after. `--image`: Docker workspaces of
that image instead (`eval "$(scripts/docker-engine.sh start)"; scripts/build-images.sh echo`).
Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._load import body as rpc_body  # noqa: E402
from tests.e2e.harness import ECHO, BerthServer  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> int:
    """Processes whose parent is `pid` (berth's running agents)."""
    n = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                n += 1
    return n


async def send(c: httpx.AsyncClient, ws: str) -> float:
    body = rpc_body("hi")
    t0 = time.monotonic()
    r = await c.post(f"/v1/workspaces/{ws}/a2a", json=body, headers={"a2a-version": "1.0"})
    if r.status_code != 200 or "result" not in r.json():
        raise RuntimeError(f"{ws}: {r.status_code} {r.text[:200]}")
    return time.monotonic() - t0


async def status(c: httpx.AsyncClient, ws: str) -> str:
    return str((await c.get(f"/v1/workspaces/{ws}")).json()["status"])


async def until(c: httpx.AsyncClient, names: list[str], want: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all([await status(c, n) == want for n in names]):
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"not all {want} after {timeout} s")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workspaces", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--wakes", type=int, default=5)
    ap.add_argument("--image", help="Docker workspaces of this image (default: processes)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="berth-bench-idle-") as tmp:
        # Docker agents reach berth through the bridge's gateway, as in tests/docker
        extra = ["--host", "0.0.0.0"] if args.image else []
        # berth's Python server alone, as measured so far: the CPU counted is its pid's
        server = BerthServer(
            Path(tmp) / "berth", env={"BERTH_FAST_LANE": "off"}, args=extra
        ).start()
        assert server.proc is not None
        pid = server.proc.pid
        try:
            async with server.client() as c:
                await asyncio.sleep(1.0)
                before = rss_mb(pid)
                names = [f"idle-{i}" for i in range(args.workspaces)]
                for k in range(0, len(names), args.batch):
                    batch = names[k : k + args.batch]
                    for n in batch:
                        spec: dict[str, object] = {"name": n, "idle_suspend_seconds": 1}
                        if args.image:
                            spec.update(runtime="docker", image=args.image)
                        else:
                            spec["command"] = ECHO
                        (await c.post("/v1/workspaces", json=spec)).raise_for_status()
                    await until(c, batch, "suspended")
                    print(f"{k + len(batch)} suspended", flush=True)
                await asyncio.sleep(2.0)
                after = rss_mb(pid)
                running = children(pid)
                wakes, warm = [], []
                for n in names[: args.wakes]:
                    wakes.append(await send(c, n))
                    warm.append(await send(c, n))
                for n in names:  # removed: their state (a Docker volume) goes with them
                    (await c.delete(f"/v1/workspaces/{n}")).raise_for_status()
        finally:
            server.stop()
    kind = f"docker ({args.image})" if args.image else "process"
    print(f"\n{args.workspaces} suspended {kind} workspaces; agent processes running: {running}")
    print(
        f"berth resident memory: {before:.0f} MB with none, {after:.0f} MB with "
        f"{args.workspaces} ({(after - before) / args.workspaces * 1024:.0f} kB per workspace)"
    )
    print(
        f"wake (send to a suspended workspace -> reply), {len(wakes)} times: median "
        f"{statistics.median(wakes) * 1000:.0f} ms, max {max(wakes) * 1000:.0f} ms; "
        f"the next message to it: median {statistics.median(warm) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
