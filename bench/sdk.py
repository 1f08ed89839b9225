"""What `berth.sdk` costs per message over the same executor served by bare a2a-sdk.

    python bench/sdk.py [--paired 2000] [--no-http] [--seconds 3] [--rounds 3]
                        [--concurrency 1,16] [--profile DIR] [--ref-src DIR]

Starts two agent processes with the same trivial executor (it answers one Message) and the
same task store (a2a-sdk's DatabaseTaskStore on SQLite, as `berth.sdk` uses):

- `bare`: a2a-sdk's JSON-RPC routes under uvicorn, nothing else;
- `sdk`:  `berth.sdk.build_app` (drain counting, durable dedupe by messageId, execution
  records), under the same uvicorn settings.

First, in one process (`--paired N`): both apps side by side, each message sent straight
into bare and then sdk (order alternating) as an ASGI call, no socket; the per-message
difference is what the SDK's path adds, and noise from the machine hits both alike.

Then, over HTTP, drives both agent processes with the same closed-loop load (`_load.run`), alternating bare and sdk
within each round so that noise from other work on the machine hits both alike, and prints
the medians over the rounds side by side with the difference, and the CPU time each agent
process spent per message (user + system, all its threads, from /proc): a steadier measure
of what the SDK adds than latency on a shared machine. `--profile DIR` runs the sdk agent
under cProfile and writes DIR/sdk.prof (plus a text summary) when it stops. `--ref-src DIR`
adds a third agent, `sdk-ref`: berth.sdk imported from DIR (e.g. an older checkout's
`src`), to compare two versions of the SDK in the same run.

Serving mode (used by the benchmark itself): `python bench/sdk.py --serve bare|sdk --port P
--state DIR`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import Result, body, run  # noqa: E402

KINDS = ("bare", "sdk")
SERVE_KINDS = ("bare", "sdk", "sdk-ref")


# --- the agents -------------------------------------------------------------------------


def _executor() -> Any:
    from a2a.helpers.proto_helpers import new_text_message
    from a2a.server.agent_execution import AgentExecutor, RequestContext
    from a2a.server.events import EventQueue
    from a2a.types import Role

    class Trivial(AgentExecutor):
        async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
            await event_queue.enqueue_event(
                new_text_message("ok", context_id=context.context_id, role=Role.ROLE_AGENT)
            )

        async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
            return None

    return Trivial()


def _bare_app(state: Path) -> Any:
    from a2a.server.request_handlers import DefaultRequestHandler
    from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from berth.examples.echo import card
    from berth.sdk.tasks import durable_task_store

    store, engine = durable_task_store(state)
    c = card("http://127.0.0.1/")
    handler = DefaultRequestHandler(agent_executor=_executor(), task_store=store, agent_card=c)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await store.initialize()  # type: ignore[attr-defined]
        yield
        await handler.aclose()
        await engine.dispose()

    routes = create_jsonrpc_routes(handler, rpc_url="/", enable_v0_3_compat=True)
    routes += create_agent_card_routes(c)
    routes.append(Route("/healthz", lambda _: JSONResponse({"status": "ok"})))
    return Starlette(routes=routes, lifespan=lifespan)


def _sdk_app(state: Path) -> Any:
    from berth.examples.echo import card
    from berth.sdk import build_app

    os.environ["BERTH_STATE_DIR"] = str(state)
    os.environ.pop("BERTH_URL", None)  # on its own: no registering
    return build_app(_executor(), card("http://127.0.0.1/")).app


def serve(kind: str, port: int, state: Path, profile: Path | None) -> None:
    import uvicorn

    app = _bare_app(state) if kind == "bare" else _sdk_app(state)  # sdk-ref: sdk from PYTHONPATH
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        loop="uvloop",
        http="httptools",
    )
    server = uvicorn.Server(config)
    if profile is None:
        server.run()
        return
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    try:
        server.run()
    finally:
        prof.disable()
        prof.dump_stats(profile / f"{kind}.prof")
        with open(profile / f"{kind}.txt", "w") as f:
            st = pstats.Stats(prof, stream=f).sort_stats("cumulative")
            st.print_stats(60)
            st.sort_stats("tottime").print_stats(40)


# --- in one process, message by message -------------------------------------------------


async def _asgi_post(app: Any, payload: bytes) -> tuple[int, bytes]:
    """One POST / straight into an ASGI app: no socket, no HTTP server, no client."""
    headers = [(b"content-type", b"application/json"), (b"a2a-version", b"1.0")]
    headers += [(b"content-length", str(len(payload)).encode()), (b"host", b"127.0.0.1")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    given = False
    status, out = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await asyncio.sleep(3600)  # the caller never hangs up
        return {"type": "http.disconnect"}

    async def send(msg: dict[str, Any]) -> None:
        nonlocal status
        if msg["type"] == "http.response.start":
            status = msg["status"]
        elif msg["type"] == "http.response.body":
            out.append(msg.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(out)


async def paired(n: int, tmp: Path) -> None:
    """Both apps in this process; each message goes to bare and to sdk in turn (the order
    alternating), so that whatever else the machine does hits both alike: the per-message
    difference is what the SDK's path adds, with no network or server in between."""
    import orjson

    apps = {"bare": _bare_app(tmp / "paired-bare"), "sdk": _sdk_app(tmp / "paired-sdk")}
    lat: dict[str, list[float]] = {"bare": [], "sdk": []}
    async with contextlib.AsyncExitStack() as stack:
        for app in apps.values():
            await stack.enter_async_context(app.router.lifespan_context(app))
        warm = max(50, n // 10)
        for i in range(warm + n):
            for kind in KINDS if i % 2 == 0 else KINDS[::-1]:
                doc = orjson.dumps(body("bench"))
                t0 = time.perf_counter()
                status, out = await _asgi_post(apps[kind], doc)
                dt = time.perf_counter() - t0
                if status != 200 or b'"result"' not in out:
                    raise RuntimeError(f"{kind} answered {status}: {out[:200]!r}")
                if i >= warm:
                    lat[kind].append(dt)
    diffs = sorted(y - x for x, y in zip(lat["bare"], lat["sdk"], strict=True))
    b, s = sorted(lat["bare"]), sorted(lat["sdk"])

    def q(xs: list[float], p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000

    print(f"## in one process, {n} messages each, alternating (no network, no HTTP server)")
    print(f"bare p50 {q(b, 0.5):.3f} ms  p99 {q(b, 0.99):.3f} ms")
    print(f"sdk  p50 {q(s, 0.5):.3f} ms  p99 {q(s, 0.99):.3f} ms")
    print(
        f"sdk adds {q(s, 0.5) - q(b, 0.5):+.3f} ms p50; "
        f"median of the per-message differences {q(diffs, 0.5):+.3f} ms",
        flush=True,
    )


# --- the driver -------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    kind: str, tmp: Path, profile: Path | None, ref_src: str | None
) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["OTEL_INSTRUMENTATION_A2A_SDK_ENABLED"] = "false"
    if kind == "sdk-ref" and ref_src:
        env["PYTHONPATH"] = ref_src
    cmd = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
    cmd += ["--state", str(tmp / f"{kind}-state")]
    if profile is not None and kind == "sdk":
        cmd += ["--profile", str(profile)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120  # a busy shared machine starts Python slowly
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} agent exited with {proc.returncode}")
        try:
            if httpx.get(url + "healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{kind} agent did not start")


def _median(results: list[Result], f: Any) -> float:
    return float(statistics.median(f(r) for r in results))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all threads (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(args: argparse.Namespace, profile: Path | None, ref_src: str | None) -> None:
    levels = [int(x) for x in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        urls: dict[str, str] = {}
        kinds = KINDS + (("sdk-ref",) if ref_src else ())
        cpu: dict[tuple[str, int], list[float]] = {}
        if args.paired:
            await paired(args.paired, tmp)
            print()
        if not args.http:
            return
        try:
            for kind in kinds:
                procs[kind], urls[kind] = _start(kind, tmp, profile, ref_src)
            print(
                f"# berth.sdk vs bare a2a-sdk, same trivial executor and task store: "
                f"{os.cpu_count()} cores, {args.rounds} rounds x {args.seconds:g} s per run"
                + (f"; sdk-ref from {ref_src}" if ref_src else "")
            )
            got: dict[tuple[str, int], list[Result]] = {}
            for rnd in range(args.rounds):
                for c in levels:
                    order = kinds if rnd % 2 == 0 else kinds[::-1]
                    for kind in order:
                        pid = procs[kind].pid
                        await run(kind, urls[kind], c, 0.5, {}, warmup=0)  # warm-up
                        cpu0 = _cpu_seconds(pid)
                        # warmup=0: every message the agent handles meanwhile is counted
                        r = await run(kind, urls[kind], c, args.seconds, {}, warmup=0)
                        cpu.setdefault((kind, c), []).append((_cpu_seconds(pid) - cpu0) / r.n)
                        got.setdefault((kind, c), []).append(r)
                        print(
                            f"  round {rnd + 1}: {r.row()}   cpu/msg {cpu[(kind, c)][-1] * 1000:.2f} ms",
                            flush=True,
                        )
            print()
            print("| c | agent | msg/s | p50 ms | p99 ms | CPU ms/msg | errors |")
            print("|---|---|---|---|---|---|---|")
            for c in levels:
                for kind in kinds:
                    rs = got[(kind, c)]
                    print(
                        f"| {c} | {kind} | {_median(rs, lambda r: r.rps):.0f} | "
                        f"{_median(rs, lambda r: r.pct(50)):.2f} | "
                        f"{_median(rs, lambda r: r.pct(99)):.2f} | "
                        f"{statistics.median(cpu[(kind, c)]) * 1000:.2f} | "
                        f"{sum(r.errors for r in rs)} |"
                    )
            print()
            for c in levels:
                b = got[("bare", c)]
                for kind in kinds[1:]:
                    s = got[(kind, c)]
                    # per round, this agent minus the bare run beside it; then the median
                    dp50 = statistics.median(
                        y.pct(50) - x.pct(50) for x, y in zip(b, s, strict=True)
                    )
                    dp99 = statistics.median(
                        y.pct(99) - x.pct(99) for x, y in zip(b, s, strict=True)
                    )
                    ratio = statistics.median(y.rps / x.rps for x, y in zip(b, s, strict=True))
                    dcpu = statistics.median(
                        y - x for x, y in zip(cpu[("bare", c)], cpu[(kind, c)], strict=True)
                    )
                    print(
                        f"c={c}: {kind} adds {dp50:+.2f} ms p50, {dp99:+.2f} ms p99, "
                        f"{dcpu * 1000:+.2f} ms CPU per message; throughput {ratio * 100:.0f} % "
                        f"of bare (medians of per-round differences)"
                    )
        finally:
            for p in procs.values():
                p.send_signal(signal.SIGINT)
            for p in procs.values():
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
    if profile is not None:
        print(f"\nprofile of the sdk agent: {profile / 'sdk.prof'} (summary in sdk.txt)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--profile")
    ap.add_argument("--ref-src")
    ap.add_argument("--paired", type=int, default=2000, help="in-process messages (0: none)")
    ap.add_argument("--no-http", dest="http", action="store_false", help="only the paired part")
    ap.add_argument("--serve", choices=SERVE_KINDS)
    ap.add_argument("--port", type=int)
    ap.add_argument("--state")
    args = ap.parse_args()
    if args.serve:
        serve(
            args.serve,
            args.port,
            Path(args.state),
            Path(args.profile) if args.profile else None,
        )
        return
    profile = Path(args.profile).resolve() if args.profile else None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    ref = str(Path(args.ref_src).resolve()) if args.ref_src else None
    asyncio.run(drive(args, profile, ref))


if __name__ == "__main__":
    main()
