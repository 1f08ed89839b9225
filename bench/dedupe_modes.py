"""The SDK's dedupe file per send: exclusive locking (one process) vs shared (a deploy's two).

    python bench/dedupe_modes.py [--n 5000] [--rounds 5]

What `berth.sdk`'s Dedupe does per Message-returning send (one lookup, one stored
response: begin, lookup, finish), timed in one process, alternating the two modes each
round on fresh state directories: `exclusive` (the default; `restart_mode` stop-first) and
`shared` (`BERTH_SHARED_STATE=1`, what `restart_mode` replace workspaces run with). Also
`shared+reader`: shared while a second process holds the same file open and reads it (the
old version during a deploy). Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from berth.sdk import dedupe as dedupe_module  # noqa: E402

Dedupe = dedupe_module.Dedupe

READER = """
import importlib.util, sys, time
from pathlib import Path
spec = importlib.util.spec_from_file_location("dedupe", sys.argv[1])
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
d = m.Dedupe(Path(sys.argv[2]), shared=True)
print("ready", flush=True)
while True:
    d.lookup("nothing"); time.sleep(0.01)
"""


async def per_send(state: Path, shared: bool, n: int) -> float:
    """Microseconds per send: begin, lookup (a miss), finish (the stored response)."""
    d = Dedupe(state, shared=shared)
    body = b'{"jsonrpc":"2.0","id":1,"result":{"message":{"parts":[{"text":"echo"}]}}}'
    t0 = time.perf_counter()
    for i in range(n):
        mid = f"m-{i}"
        d.lookup(mid)
        d.begin(mid)
        d.finish(mid, "result", body)
    took = time.perf_counter() - t0
    d.close()
    return took / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    out: dict[str, list[float]] = {"exclusive": [], "shared": [], "shared+reader": []}
    with tempfile.TemporaryDirectory(prefix="berth-bench-dedupe-") as tmp:
        for r in range(args.rounds):
            out["exclusive"].append(asyncio.run(per_send(Path(tmp) / f"x{r}", False, args.n)))
            out["shared"].append(asyncio.run(per_send(Path(tmp) / f"s{r}", True, args.n)))
            state = Path(tmp) / f"r{r}"
            Dedupe(state, shared=True).close()
            reader = subprocess.Popen(
                [sys.executable, "-c", READER, str(dedupe_module.__file__), str(state)],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"
                out["shared+reader"].append(asyncio.run(per_send(state, True, args.n)))
            finally:
                reader.kill()
                reader.wait()
    print(f"{args.n} sends per round, {args.rounds} rounds (median, min-max), µs per send:")
    for k, v in out.items():
        print(f"  {k:<14} {statistics.median(v):7.1f}   ({min(v):.1f}-{max(v):.1f})")


if __name__ == "__main__":
    main()
