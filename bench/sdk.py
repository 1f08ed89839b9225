"""What `berth.sdk` costs per message over the same executor served by bare a2a-sdk.

    python bench/sdk.py [--seconds 3] [--rounds 3] [--concurrency 1,16] [--profile DIR]

Starts two agent processes with the same trivial executor (it answers one Message) and the
same task store (a2a-sdk's DatabaseTaskStore on SQLite, as `berth.sdk` uses):

- `bare`: a2a-sdk's JSON-RPC routes under uvicorn, nothing else;
- `sdk`:  `berth.sdk.build_app` (drain counting, durable dedupe by messageId, execution
  records), under the same uvicorn settings.

Then drives both with the same closed-loop load (`_load.run`), alternating bare and sdk
within each round so that noise from other work on the machine hits both alike, and prints
the medians over the rounds side by side with the difference. `--profile DIR` runs the sdk
agent under cProfile and writes DIR/sdk.prof (plus a text summary) when it stops.

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
from _load import Result, run  # noqa: E402

KINDS = ("bare", "sdk")


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

    app = _bare_app(state) if kind == "bare" else _sdk_app(state)
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


# --- the driver -------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(kind: str, tmp: Path, profile: Path | None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["OTEL_INSTRUMENTATION_A2A_SDK_ENABLED"] = "false"
    cmd = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
    cmd += ["--state", str(tmp / f"{kind}-state")]
    if profile is not None and kind == "sdk":
        cmd += ["--profile", str(profile)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} agent exited with {proc.returncode}")
        try:
            if httpx.get(url + "healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{kind} agent did not start")


def _median(results: list[Result], f: Any) -> float:
    return float(statistics.median(f(r) for r in results))


async def drive(args: argparse.Namespace, profile: Path | None) -> None:
    levels = [int(x) for x in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        urls: dict[str, str] = {}
        try:
            for kind in KINDS:
                procs[kind], urls[kind] = _start(kind, tmp, profile)
            print(
                f"# berth.sdk vs bare a2a-sdk, same trivial executor and task store: "
                f"{os.cpu_count()} cores, {args.rounds} rounds x {args.seconds:g} s per run"
            )
            got: dict[tuple[str, int], list[Result]] = {}
            for rnd in range(args.rounds):
                for c in levels:
                    order = KINDS if rnd % 2 == 0 else KINDS[::-1]
                    for kind in order:
                        r = await run(kind, urls[kind], c, args.seconds, {})
                        got.setdefault((kind, c), []).append(r)
                        print(f"  round {rnd + 1}: {r.row()}", flush=True)
            print()
            print("| c | agent | msg/s | p50 ms | p99 ms | errors |")
            print("|---|---|---|---|---|---|")
            for c in levels:
                for kind in KINDS:
                    rs = got[(kind, c)]
                    print(
                        f"| {c} | {kind} | {_median(rs, lambda r: r.rps):.0f} | "
                        f"{_median(rs, lambda r: r.pct(50)):.2f} | "
                        f"{_median(rs, lambda r: r.pct(99)):.2f} | {sum(r.errors for r in rs)} |"
                    )
            print()
            for c in levels:
                b, s = got[("bare", c)], got[("sdk", c)]
                # per round, sdk minus the bare run beside it; then the median of those
                dp50 = statistics.median(y.pct(50) - x.pct(50) for x, y in zip(b, s, strict=True))
                dp99 = statistics.median(y.pct(99) - x.pct(99) for x, y in zip(b, s, strict=True))
                ratio = statistics.median(y.rps / x.rps for x, y in zip(b, s, strict=True))
                print(
                    f"c={c}: sdk adds {dp50:+.2f} ms p50, {dp99:+.2f} ms p99; "
                    f"throughput {ratio * 100:.0f} % of bare (medians of per-round differences)"
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
    ap.add_argument("--serve", choices=KINDS)
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
    asyncio.run(drive(args, profile))


if __name__ == "__main__":
    main()
