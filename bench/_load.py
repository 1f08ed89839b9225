"""A small closed-loop load generator: N workers, each sending one request at a time."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass
class Result:
    label: str
    concurrency: int
    n: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def rps(self) -> float:
        return self.n / self.seconds

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000

    def row(self) -> str:
        return (
            f"{self.label:<28} c={self.concurrency:<3} {self.rps:>8.0f} req/s   p50 {self.pct(50):6.2f} ms   "
            f"p99 {self.pct(99):7.2f} ms   errors {self.errors}"
        )


def body(text: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {
            "message": {
                "role": "ROLE_USER",
                "messageId": str(uuid.uuid4()),
                "parts": [{"text": text}],
            }
        },
    }


async def run(
    label: str,
    url: str,
    concurrency: int,
    seconds: float,
    headers: dict[str, str],
    warmup: float = 1.0,
    on_start: Callable[[], None] | None = None,
) -> Result:
    """`on_start`: called when the warm-up ends and measuring begins."""
    conn = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(
        connector=conn, headers={**headers, "a2a-version": "1.0"}
    ) as s:
        lat: list[float] = []
        errors = 0
        stop_at = 0.0
        measuring = False

        async def worker() -> None:
            nonlocal errors
            while True:
                t0 = time.perf_counter()
                if t0 > stop_at:
                    return
                async with s.post(url, json=body("bench")) as r:
                    data = await r.read()
                    ok = r.status == 200 and b'"result"' in data
                if measuring:
                    lat.append(time.perf_counter() - t0)
                    errors += 0 if ok else 1

        stop_at = time.perf_counter() + warmup
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        measuring = True
        if on_start is not None:
            on_start()
        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return Result(label, concurrency, len(lat), elapsed, lat, errors)


def summary(direct: Result, via: Result) -> str:
    return (
        f"  -> berth/direct throughput {via.rps / direct.rps * 100:5.1f} %, "
        f"added p50 {via.pct(50) - direct.pct(50):+.2f} ms, added p99 {via.pct(99) - direct.pct(99):+.2f} ms"
        f" (median of per-request latencies: direct {statistics.median(direct.latencies) * 1000:.2f} ms)"
    )
