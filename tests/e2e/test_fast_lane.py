"""The fast lane (docs/fast-lane.md) in front of a real `berth serve`: the plain send is
served by the compiled lane, and everything about it that a caller, an agent or an
operator can see is what Python alone gives: the answer, a retry's replay, the metrics,
the delivery record; every way a forward can go wrong is handed to Python and ends as it
would have there; a lane killed mid-forward loses nothing.

The agent is a scripted aiohttp app (an `external` workspace found by its card): what it
answers depends on the message's text."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from berth.server import KEEP_ALIVE
from tests.e2e.harness import (
    ADMIN,
    LANE_ENV,
    PYTHON_ENV,
    BerthServer,
    lane_served,
    require_lane,
    send_body,
    serve_app,
)
from tests.e2e.test_replicas import _admin
from tests.services import require_postgres

pytestmark = pytest.mark.slow


class Agent:
    """A stock A2A agent whose answers the test scripts by the message's text."""

    def __init__(self) -> None:
        self.forwards: Counter[str] = Counter()  # messageId -> requests seen
        self.headers: dict[str, dict[str, str]] = {}
        self.drained: set[str] = set()
        self.url = ""
        self.runner: Any = None

    async def card(self, _: web.Request) -> web.Response:
        return web.json_response({"name": "scripted", "version": "1"})

    async def rpc(self, request: web.Request) -> web.Response:
        doc = await request.json()
        msg = doc["params"]["message"]
        mid, text = msg["messageId"], msg["parts"][0]["text"]
        self.forwards[mid] += 1
        self.headers[mid] = dict(request.headers)
        if text.startswith("slow:"):
            await asyncio.sleep(float(text[5:]))
        if text == "drain-once" and mid not in self.drained:
            self.drained.add(mid)
            err = {"code": -32603, "message": "draining", "data": {"reason": "DRAINING"}}
            return web.json_response({"jsonrpc": "2.0", "id": doc["id"], "error": err})
        if text == "fail":
            return web.Response(status=500, text="boom")
        result = {
            "message": {"role": "ROLE_AGENT", "messageId": "r-" + mid, "parts": [{"text": text}]}
        }
        return web.json_response({"jsonrpc": "2.0", "id": doc["id"], "result": result})

    async def start(self, port: int | None = None) -> Agent:
        app = web.Application()
        app.router.add_get("/.well-known/agent-card.json", self.card)
        app.router.add_post("/", self.rpc)
        if port is None:
            self.runner, self.url = await serve_app(app)
        else:
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", port).start()
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


def _lane_on(env: dict[str, str] | None = None) -> dict[str, str]:
    return {**LANE_ENV, **(env or {})}


def _accepted(delivery_id: str) -> dict[str, str]:
    """The body Python answers a wait that ran out with (proxy._accepted)."""
    return {
        "delivery_id": delivery_id,
        "status": "in_flight",
        "status_url": f"/v1/deliveries/{delivery_id}",
    }


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    a = await Agent().start()
    yield a
    await a.stop()


@contextlib.contextmanager
def _serving(tmp_path: Path, call_failed: Any, **env: str) -> Iterator[BerthServer]:
    """A berth with its lane serving, stopped afterwards (its log's tail when the test failed)."""
    server = BerthServer(tmp_path / "berth", env=_lane_on({"BERTH_MAX_ATTEMPTS": "2", **env}))
    server.start()
    try:
        require_lane(server)
        yield server
    finally:
        server.stop()
        server.kill9()
        if call_failed():
            server.print_log_tail()


@pytest.fixture
def lane_server(tmp_path: Path, call_failed: Any) -> Iterator[BerthServer]:
    with _serving(tmp_path, call_failed) as server:
        yield server


# the lane on each store: SQLite (its own group commit) and PostgreSQL (libpq, the accept
# in berth_lane_write: adapters/sql/postgres_lane.py)
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@contextlib.asynccontextmanager
async def store_env(store: str) -> AsyncIterator[dict[str, str]]:
    """The environment of a berth on `store`: nothing for SQLite, a fresh PostgreSQL
    database (dropped afterwards) for postgres."""
    if store == "sqlite":
        yield {}
        return
    pg = require_postgres()
    name = f"berth_lane_{uuid.uuid4().hex[:10]}"
    await _admin(pg, f"CREATE DATABASE {name}")
    try:
        yield {"BERTH_DATABASE_URL": pg.rsplit("/", 1)[0] + "/" + name}
    finally:
        await _admin(pg, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=STORES)
async def store_lane_server(
    request: pytest.FixtureRequest, tmp_path: Path, call_failed: Any
) -> AsyncIterator[BerthServer]:
    """lane_server, on each store."""
    async with store_env(request.param) as env:
        with _serving(tmp_path, call_failed, **env) as server:
            yield server


async def _workspace(c: httpx.AsyncClient, name: str, url: str, **spec: Any) -> None:
    r = await c.post(
        "/v1/workspaces", json={"name": name, "runtime": "external", "url": url, **spec}
    )
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 30
    while (await c.get(f"/v1/workspaces/{name}")).json()["status"] != "online":
        assert time.monotonic() < deadline, "the workspace did not come online"
        await asyncio.sleep(0.1)


async def _send(c: httpx.AsyncClient, ws: str, text: str, mid: str | None = None) -> httpx.Response:
    return await c.post(
        f"/v1/workspaces/{ws}/a2a",
        json=send_body(text, mid or str(uuid.uuid4())),
        headers={"a2a-version": "1.0"},
    )


async def test_plain_sends_are_served_by_the_lane_and_counted_by_berth(store_lane_server, agent):
    lane_server = store_lane_server
    async with lane_server.client() as c:
        await _workspace(c, "w", agent.url, max_concurrency=64)
        before = (await c.get("/metrics")).text
        rs = await asyncio.gather(*(_send(c, "w", f"hello {i}") for i in range(20)))
        assert [r.status_code for r in rs] == [200] * 20
        assert sorted(r.json()["result"]["message"]["parts"][0]["text"] for r in rs) == sorted(
            f"hello {i}" for i in range(20)
        )
        assert all("x-berth-replayed" not in r.headers for r in rs)
        ids = [r.headers["x-berth-delivery-id"] for r in rs]
        # the records are berth's: done, one forward, the reply and who sent it
        for i in ids:
            d = (await c.get(f"/v1/deliveries/{i}")).json()
            assert d["status"] == "done" and d["forwards"] == 1, d
        after = (await c.get("/metrics")).text
        assert (
            _metric(after, "berth_lane_deliveries_total")
            - _metric(before, "berth_lane_deliveries_total")
            == 20
        )
        assert (
            _metric(after, "berth_deliveries_total", workspace="w", outcome="done")
            - _metric(before, "berth_deliveries_total", workspace="w", outcome="done")
            == 20
        )
        # the lane's own writes are power-loss durable: its writer's connection says FULL
        # (on PostgreSQL: each commit waits for its WAL on disk)
        said = lane_server.log.read_text()
        assert (
            "lane: writing with synchronous=2 " in said
            or "lane: writing to PostgreSQL with synchronous_commit=on," in said
        )
        # what the agent got is what berth forwards: the caller's A2A headers and berth's word
        # on who called
        h = next(iter(agent.headers.values()))
        assert h["x-berth-caller"] == "operator" and h["a2a-version"] == "1.0"


async def test_a_retry_through_the_lane_is_answered_as_a_replay(store_lane_server, agent):
    lane_server = store_lane_server
    async with lane_server.client() as c:
        await _workspace(c, "w", agent.url)
        first = await _send(c, "w", "once", "m-1")
        again = await _send(c, "w", "once", "m-1")
        assert first.status_code == again.status_code == 200
        assert "x-berth-replayed" not in first.headers
        assert again.headers["x-berth-replayed"] == "true"
        assert again.headers["x-berth-delivery-id"] == first.headers["x-berth-delivery-id"]
        assert again.json()["result"] == first.json()["result"]
        assert agent.forwards["m-1"] == 1
        # the same messageId for another request: refused by Python, nothing accepted
        other = await _send(c, "w", "something else", "m-1")
        assert other.json()["error"]["code"] == -32602


@pytest.mark.parametrize("store", STORES)
async def test_the_lane_answers_as_python_does(tmp_path, agent, store):
    """The same sends to a berth without the lane and to one with it: the same statuses,
    bodies and header names (only the date and the ids differ)."""
    seen: dict[str, list[tuple[int, Any, list[str]]]] = {}
    for mode, env in (("python", PYTHON_ENV), ("lane", _lane_on())):
        async with store_env(store) as db:
            seen[mode] = await _answers(tmp_path / mode, {**env, **db}, mode, agent)
    assert seen["lane"] == seen["python"]


async def _answers(
    data: Path, env: dict[str, str], mode: str, agent: Agent
) -> list[tuple[int, Any, list[str]]]:
    server = BerthServer(data, env=env).start()
    try:
        if mode == "lane":
            require_lane(server)
        async with server.client() as c:
            await _workspace(c, "w", agent.url)
            out = []
            for body in (
                send_body("v1", "t-1"),
                send_body("v03", "t-2", v03=True, rid="abc"),
            ):
                r = await c.post("/v1/workspaces/w/a2a", json=body)
                out.append((r.status_code, r.json(), sorted(k for k in r.headers if k != "date")))
            return out
    finally:
        server.stop()


@pytest.mark.parametrize("store", STORES)
async def test_the_lane_records_a_send_as_python_does(tmp_path, agent, store):
    """A send the lane served leaves the delivery record Python's own would: the method as
    the caller spelt it (A2A 1.0's SendMessage or 0.3's message/send), the headers, the
    request (only the ids and the times differ)."""
    volatile = {"id", "delivery_id", "workspace_id"}  # and the times:
    volatile |= {"created_at", "first_forwarded_at", "finished_at"}
    seen: dict[str, list[Any]] = {}
    for mode, env in (("python", PYTHON_ENV), ("lane", _lane_on())):
        async with store_env(store) as db:
            seen[mode] = await _records(tmp_path / mode, {**env, **db}, mode, agent, volatile)
    assert seen["python"][-1] == ["SendMessage", "message/send"]
    assert seen["lane"] == seen["python"]


async def _records(
    data: Path, env: dict[str, str], mode: str, agent: Agent, volatile: set[str]
) -> list[Any]:
    server = BerthServer(data, env=env).start()
    try:
        if mode == "lane":
            require_lane(server)
        before = lane_served(server)
        async with server.client() as c:
            await _workspace(c, "w", agent.url)
            out: list[Any] = []
            for body in (
                send_body("v1", "r-1"),
                send_body("v03", "r-2", v03=True, rid="abc"),
            ):
                r = await c.post("/v1/workspaces/w/a2a", json=body)
                assert r.status_code == 200, r.text
                i = r.headers["x-berth-delivery-id"]
                shown = (await c.get(f"/v1/deliveries/{i}")).json()
                carried = (await c.get(f"/v1/deliveries/{i}/request")).json()
                for doc in (shown, carried):
                    for k in volatile & doc.keys():
                        doc[k] = None
                out.append((shown, carried))
            listed = (await c.get("/v1/workspaces/w/deliveries")).json()["deliveries"]
            out.append(sorted(d["method"] for d in listed))
        # the lane served both itself (else this compares Python with Python)
        assert lane_served(server) - before == (2 if mode == "lane" else 0)
        return out
    finally:
        server.stop()


async def test_a_draining_refusal_is_handed_to_python_and_held(store_lane_server, agent):
    lane_server = store_lane_server
    async with lane_server.client() as c:
        await _workspace(c, "w", agent.url)
        r = await _send(c, "w", "drain-once", "d-1")
        assert r.status_code == 200, r.text
        assert r.json()["result"]["message"]["parts"][0]["text"] == "drain-once"
        assert "x-berth-replayed" not in r.headers
        assert agent.forwards["d-1"] == 2
        d = (await c.get(f"/v1/deliveries/{r.headers['x-berth-delivery-id']}")).json()
        assert d["status"] == "done" and d["forwards"] == 2 and d["attempts"] == 0, d


async def test_an_agent_that_fails_is_retried_then_dead_as_python_decides(store_lane_server, agent):
    lane_server = store_lane_server
    async with lane_server.client() as c:
        await _workspace(c, "w", agent.url)
        r = await _send(c, "w", "fail", "f-1")
        d = (await c.get(f"/v1/deliveries/{r.headers['x-berth-delivery-id']}")).json()
        assert d["status"] == "dead" and d["attempts"] == 2, d  # BERTH_MAX_ATTEMPTS=2
        assert agent.forwards["f-1"] == 2
        assert "error" in r.json() and "x-berth-replayed" not in r.headers


async def test_an_agent_away_is_handed_to_python_and_delivered_when_back(store_lane_server):
    lane_server = store_lane_server
    agent = await Agent().start()
    port = int(agent.url.rsplit(":", 1)[1])
    async with lane_server.client() as c:
        await _workspace(c, "w", agent.url)
        await agent.stop()  # nothing listens on its port now: the lane cannot connect
        send = asyncio.create_task(_send(c, "w", "late", "a-1"))
        await asyncio.sleep(1.5)
        assert not send.done()
        back = await Agent().start(port)
        try:
            r = await asyncio.wait_for(send, 60)
            assert r.status_code == 200, r.text
            assert r.json()["result"]["message"]["parts"][0]["text"] == "late"
            assert "x-berth-replayed" not in r.headers
            assert back.forwards["a-1"] == 1
        finally:
            await back.stop()


async def test_a_wait_that_runs_out_is_answered_202_and_the_forward_goes_on(tmp_path, agent):
    server = BerthServer(
        tmp_path / "b", env=_lane_on({"BERTH_DEFAULT_WAIT_SECONDS": "0.5"})
    ).start()
    try:
        require_lane(server)
        async with server.client() as c:
            await _workspace(c, "w", agent.url, max_concurrency=4)
            r = await _send(c, "w", "slow:2", "s-1")
            assert r.status_code == 202
            i = r.headers["x-berth-delivery-id"]
            assert r.json() == _accepted(i)
            # the connection goes on serving while the forward runs
            ok = await _send(c, "w", "quick", "s-2")
            assert ok.status_code == 200
            deadline = time.monotonic() + 10
            while (d := (await c.get(f"/v1/deliveries/{i}")).json())["status"] != "done":
                assert time.monotonic() < deadline, d
                await asyncio.sleep(0.1)
            assert d["forwards"] == 1 and agent.forwards["s-1"] == 1
    finally:
        server.stop()


@pytest.mark.parametrize("store", STORES)
async def test_the_lane_renews_the_lease_of_a_long_forward(tmp_path, agent, store):
    """A forward longer than the lease: the lane renews it (every third of a lease), so
    Python's upkeep never takes it back and sends it again."""
    async with store_env(store) as db:
        server = BerthServer(
            tmp_path / "b", env=_lane_on({"BERTH_LEASE_SECONDS": "1.5", **db})
        ).start()
        try:
            require_lane(server)
            async with server.client() as c:
                await _workspace(c, "w", agent.url)
                r = await _send(c, "w", "slow:5", "l-1")
                assert r.status_code == 200, r.text
                d = (await c.get(f"/v1/deliveries/{r.headers['x-berth-delivery-id']}")).json()
                assert d["status"] == "done" and d["forwards"] == 1, d
                assert agent.forwards["l-1"] == 1
            assert lane_served(server) == 1
        finally:
            server.stop()


def _lane_pid(server: BerthServer) -> int:
    assert server.proc is not None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"berth-lane" in cmd and int(stat.rsplit(")", 1)[1].split()[1]) == server.proc.pid:
            return int(entry.name)
    raise AssertionError("no lane process under berth")


async def _forwarded(agent: Agent, mid: str, timeout: float = 10.0) -> None:
    """Until the agent has the message (its forward is running)."""
    deadline = time.monotonic() + timeout
    while agent.forwards[mid] == 0:
        assert time.monotonic() < deadline, f"{mid} never reached the agent"
        await asyncio.sleep(0.02)


async def test_a_lane_killed_mid_forward_loses_nothing(store_lane_server, agent):
    lane_server = store_lane_server
    async with lane_server.client() as c:
        await _workspace(c, "w", agent.url)
        send = asyncio.create_task(_send(c, "w", "slow:1.5", "k-1"))
        await _forwarded(agent, "k-1")
        os.kill(_lane_pid(lane_server), signal.SIGKILL)
        with pytest.raises(httpx.HTTPError):
            await send  # the caller's connection was the lane's: cut
        require_lane(lane_server)  # berth starts it again
        # the caller retries, as a caller whose connection broke does: answered, done
        r = await _send(c, "w", "slow:1.5", "k-1")
        assert r.status_code == 200, r.text
        assert r.json()["result"]["message"]["parts"][0]["text"] == "slow:1.5"
        d = (await c.get(f"/v1/deliveries/{r.headers['x-berth-delivery-id']}")).json()
        assert d["status"] == "done", d
        # the lease the lane held was given back at once, not after lease_seconds (30)
        assert agent.forwards["k-1"] == 2


async def test_berth_killed_takes_its_lane_along_and_the_next_berth_delivers(tmp_path, agent):
    """kill -9 of berth: its lane dies with it (a lane left behind would keep the port and
    take sends no Python hears of); the next berth on the data dir gets the port and
    redelivers what the lane had in flight."""
    first = BerthServer(tmp_path / "b", env=_lane_on()).start()
    second = None
    try:
        require_lane(first)
        async with first.client() as c:
            await _workspace(c, "w", agent.url)
            send = asyncio.create_task(_send(c, "w", "slow:1", "x-1"))
            await _forwarded(agent, "x-1")
            lane = _lane_pid(first)
            first.kill9()
            with pytest.raises(httpx.HTTPError):
                await send
        deadline = time.monotonic() + 5
        while Path(f"/proc/{lane}").exists() and "Z" not in _state(lane):
            assert time.monotonic() < deadline, "the lane outlived berth"
            await asyncio.sleep(0.05)
        second = BerthServer(tmp_path / "b", port=first.port, env=_lane_on()).start()
        require_lane(second)
        async with second.client() as c:
            r = await _send(c, "w", "slow:1", "x-1")  # the caller's retry
            assert r.status_code == 200, r.text
            d = (await c.get(f"/v1/deliveries/{r.headers['x-berth-delivery-id']}")).json()
            assert d["status"] == "done" and d["forwards"] == 2, d
    finally:
        first.kill9()
        if second is not None:
            second.stop()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


# what a review found (2026-12-03): each test fails on the lane before its fix ------------
class RawAgent:
    """An agent that writes whatever bytes the test says (a card for GETs)."""

    def __init__(self, answer: Any) -> None:
        self.answer, self.posts = answer, 0
        self.url = ""

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await r.readuntil(b"\r\n\r\n")
                clen = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        clen = int(line.split(b":")[1])
                body = await r.readexactly(clen)
                if head.startswith(b"GET"):
                    card = b'{"name":"raw","version":"1"}'
                    w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(card), card))
                elif not head.startswith(b"POST / "):  # berth's signals (a resume at start)
                    w.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                else:
                    self.posts += 1
                    w.write(self.answer(body))
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    async def start(self) -> RawAgent:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self


def _reply(body: bytes, ctype: bytes = b"application/json") -> bytes:
    doc = json.loads(body)
    out = json.dumps({"jsonrpc": "2.0", "id": doc["id"], "result": {"ok": 1}}).encode()
    return b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        ctype,
        len(out),
        out,
    )


def _raw_send(body: bytes, extra: bytes = b"") -> bytes:
    """A send to workspace w as raw bytes, with the admin token (and `extra` header lines)."""
    return (
        b"POST /v1/workspaces/w/a2a HTTP/1.1\r\nhost: x\r\nauthorization: Bearer %s\r\n%s"
        b"content-length: %d\r\n\r\n%s"
    ) % (ADMIN.encode(), extra, len(body), body)


def _read_answer(s: socket.socket) -> bytes:
    """One HTTP answer with a content-length from a blocking socket, whole; a connection
    closed before it ends fails the test."""
    out = b""
    while b"\r\n\r\n" not in out:
        chunk = s.recv(65536)
        assert chunk, f"the connection closed before an answer's head: {out!r}"
        out += chunk
    head, body = out.split(b"\r\n\r\n", 1)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, "the connection closed mid-answer"
        body += chunk
    return head + b"\r\n\r\n" + body


async def test_callers_hanging_up_mid_relay_never_crash_the_lane(lane_server):
    """Both sockets of a relayed caller ready in one epoll batch: the first event closed
    the caller, the second ran on freed memory (signal 11 within a second)."""
    lane = _lane_pid(lane_server)

    def hammer(stop: threading.Event) -> None:
        req = b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", lane_server.port), timeout=2) as s:
                    s.sendall(req)
                    for _ in range(32):
                        s.send(b"j" * 4096)
            except OSError:
                time.sleep(0.01)

    stop = threading.Event()
    threads = [threading.Thread(target=hammer, args=(stop,)) for _ in range(6)]
    for t in threads:
        t.start()
    await asyncio.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    assert _lane_pid(lane_server) == lane


async def test_a_long_header_is_kept_whole(lane_server):
    """A header of 2 KB was cut at 1 KB: the stored headers were not JSON and the forward
    had no end; the delivery stuck in flight for good."""
    agent = await RawAgent(_reply).start()
    async with lane_server.client() as c:
        await _workspace(c, "w", agent.url)
        ext = "urn:x:" + "a" * 2000
        r = await c.post(
            "/v1/workspaces/w/a2a",
            json=send_body("long", "l-1"),
            headers={"a2a-version": "1.0", "a2a-extensions": ext},
        )
        assert r.status_code == 200 and r.json()["result"] == {"ok": 1}, r.text
        d = (await c.get(f"/v1/deliveries/{r.headers['x-berth-delivery-id']}")).json()
        assert d["status"] == "done", d
    assert lane_served(lane_server) == 1


async def test_an_agent_answer_with_a_control_character_is_a_failed_forward(lane_server):
    """A bare CR in the agent's content type went into the hand-off; uvicorn refused the
    hand-off and the delivery stayed the lane's forever. Now it is a failed forward, as
    Python's own client says: retried, then dead (BERTH_MAX_ATTEMPTS=2)."""

    def bad(body: bytes) -> bytes:
        return b"HTTP/1.1 500 Oops\r\ncontent-type: text/plain\rx\r\ncontent-length: 4\r\n\r\nboom"

    agent = await RawAgent(bad).start()
    async with lane_server.client() as c:
        await _workspace(c, "w", agent.url)
        r = await _send(c, "w", "x", "c-1")
        d = (await c.get(f"/v1/deliveries/{r.headers['x-berth-delivery-id']}")).json()
        assert d["status"] == "dead" and d["forwards"] == 2, d
        assert "error" in r.json()


async def test_the_hand_off_route_is_not_reachable_from_outside(lane_server, agent):
    """Even with the lane's secret (read here from its environment, as a process of the
    same user could): from the public port the hand-off route does not exist."""
    env = Path(f"/proc/{_lane_pid(lane_server)}/environ").read_bytes().split(b"\0")
    secret = next(e.split(b"=", 1)[1] for e in env if e.startswith(b"BERTH_LANE_SECRET="))
    async with lane_server.client() as c:
        await _workspace(c, "w", agent.url)
        sent = await _send(c, "w", "first", "h-0")
        r = await c.post(
            f"/v1/lane/handoff/{sent.headers['x-berth-delivery-id']}",
            headers={
                "x-berth-lane-secret": secret.decode(),
                "x-berth-lane-outcome": "transport",
            },
            content=b"",
        )
        assert r.status_code == 404
        assert r.json() == {"error": {"code": "not_found", "message": "Not Found"}}
        # the connection is the lane's again after it: a send on it is served
        assert (await _send(c, "w", "after", "h-1")).status_code == 200
    assert lane_served(lane_server) == 2


async def test_x_berth_wait_is_the_lane_s_too(store_lane_server, agent):
    lane_server = store_lane_server
    async with lane_server.client() as c:
        await _workspace(c, "w", agent.url, max_concurrency=4)
        body = send_body("slow:1", "w-0")
        r = await c.post("/v1/workspaces/w/a2a", json=body, headers={"x-berth-wait": "0"})
        assert r.status_code == 202
        i = r.headers["x-berth-delivery-id"]
        assert r.json() == _accepted(i)
        r = await c.post(
            "/v1/workspaces/w/a2a", json=send_body("quick", "w-1"), headers={"x-berth-wait": "5"}
        )
        assert r.status_code == 200
        deadline = time.monotonic() + 10
        while (await c.get(f"/v1/deliveries/{i}")).json()["status"] != "done":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        # a value Python refuses is Python's to refuse
        r = await c.post(
            "/v1/workspaces/w/a2a", json=send_body("x", "w-2"), headers={"x-berth-wait": "-1"}
        )
        assert r.status_code == 400 and "X-Berth-Wait" in r.text
    assert lane_served(lane_server) == 2


async def test_a_caller_sending_ahead_cannot_grow_the_lane(lane_server, agent):
    """Bytes a caller sends while its send waits were all kept: 400 MB in 0.3 s."""
    async with lane_server.client() as c:
        await _workspace(c, "w", agent.url)
    lane = _lane_pid(lane_server)
    req = _raw_send(json.dumps(send_body("slow:2", "g-1")).encode())

    def flood() -> tuple[int, int]:  # in a thread: the agent runs on this test's loop
        with socket.create_connection(("127.0.0.1", lane_server.port)) as s:
            s.sendall(req)
            s.settimeout(1)
            sent, junk = 0, b"x" * 65536
            deadline = time.monotonic() + 1.5
            with contextlib.suppress(OSError):
                while time.monotonic() < deadline:
                    sent += s.send(junk)
            status = Path(f"/proc/{lane}/status").read_text().splitlines()
            rss = int(next(line.split()[1] for line in status if line.startswith("VmRSS")))
            return sent, rss

    sent, rss = await asyncio.to_thread(flood)
    assert rss < 64 * 1024, f"the lane holds {rss} kB after a caller sent {sent >> 20} MB ahead"
    async with lane_server.client() as c:  # the send itself goes on to its end
        deadline = time.monotonic() + 10
        while (
            agent.forwards["g-1"] == 0
            or (await c.get("/v1/workspaces/w/deliveries")).json()["deliveries"][0]["status"]
            != "done"
        ):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)


# what a second review found (2026-12-03) ------------------------------------------------
def _lane_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_thousands_of_pipelined_requests_the_lane_answers_itself(lane_server):
    """Each answer took the next pipelined request from inside itself: 128 KB of
    `GET /v1/lane/x` without a credential overflowed the lane's stack (signal 11)."""
    lane = _lane_pid(lane_server)
    req = b"GET /v1/lane/x HTTP/1.1\r\nhost: x\r\n\r\n"

    def pipeline() -> int:
        with socket.create_connection(("127.0.0.1", lane_server.port)) as s:
            s.sendall(req * 10_000)
            s.settimeout(10)
            got = b""
            while got.count(b"HTTP/1.1 404") < 10_000:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                got += chunk
            return got.count(b"HTTP/1.1 404")

    assert await asyncio.to_thread(pipeline) == 10_000
    assert _lane_pid(lane_server) == lane


async def test_a_caller_with_a_full_buffer_does_not_spin_the_lane(lane_server, agent):
    """A caller pipelining past the read-ahead cap while its send waited kept the socket
    readable and the loop spinning (2 of every 3 CPU seconds)."""
    async with lane_server.client() as c:
        await _workspace(c, "w", agent.url)
    lane = _lane_pid(lane_server)
    req = _raw_send(json.dumps(send_body("slow:3", "f-1")).encode())

    def hold() -> float:
        with socket.create_connection(("127.0.0.1", lane_server.port)) as s:
            s.sendall(req)
            s.settimeout(0.5)
            with contextlib.suppress(OSError):
                for _ in range(64):
                    s.sendall(b"x" * 65536)
            before = _lane_cpu(lane)
            time.sleep(2)
            return _lane_cpu(lane) - before

    used = await asyncio.to_thread(hold)
    assert used < 0.5, f"the lane used {used:.2f} s of CPU in 2 s with one caller's buffer full"


async def test_a_head_longer_than_the_lane_reads_is_pythons(lane_server):
    """A 40 KB head with a body of almost max_body_bytes waited for bytes the lane would
    never read: no answer, ever. Now it is relayed, and Python answers it."""
    big = b"x-pad: " + b"p" * 40_000 + b"\r\n"
    req = _raw_send(b"{" + b" " * 1_040_000 + b"}", big)

    def send() -> bytes:
        with socket.create_connection(("127.0.0.1", lane_server.port)) as s:
            s.sendall(req)
            s.settimeout(10)
            return s.recv(100)

    assert (await asyncio.to_thread(send)).startswith(b"HTTP/1.1 ")


async def test_connection_close_holds_through_a_hand_off(lane_server):
    """The caller's `Connection: close` was lost when its send was handed to Python: the
    answer said keep-alive and the socket stayed open."""

    def fail(body: bytes) -> bytes:
        return b"HTTP/1.1 500 Oops\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\nboom"

    agent = await RawAgent(fail).start()
    async with lane_server.client() as c:
        await _workspace(c, "w", agent.url)
    req = _raw_send(json.dumps(send_body("x", "cc-1")).encode(), b"connection: close\r\n")

    def send() -> bytes:
        with socket.create_connection(("127.0.0.1", lane_server.port)) as s:
            s.sendall(req)
            s.settimeout(20)
            out = b""
            while chunk := s.recv(65536):  # to the end: the lane must close it
                out += chunk
            return out

    out = await asyncio.to_thread(send)
    head = out.split(b"\r\n\r\n", 1)[0].lower()
    assert b"connection: close" in head and b'"error"' in out
    assert agent.posts == 2  # BERTH_MAX_ATTEMPTS=2: retried once by Python, then dead


async def test_a_caller_that_never_reads_its_answers_is_not_read_either(lane_server, agent):
    """Found by fuzzing: answers the lane writes itself (a 404 for /v1/lane/) piled up for
    a caller that never read them (536 MB from one connection), and its pipelined
    requests were all answered in one turn of the loop (other callers waited seconds)."""
    async with lane_server.client() as c:
        await _workspace(c, "w", agent.url)
    lane = _lane_pid(lane_server)
    req = b"GET /v1/lane/x HTTP/1.1\r\nhost: x\r\n\r\n" * 1000
    socks = [socket.create_connection(("127.0.0.1", lane_server.port)) for _ in range(8)]
    try:

        def flood(s: socket.socket) -> None:
            s.settimeout(1)
            with contextlib.suppress(OSError):
                for _ in range(400):  # 15 MB each, unless the lane stops reading
                    s.sendall(req)

        await asyncio.gather(*(asyncio.to_thread(flood, s) for s in socks))
        async with lane_server.client() as c:
            t0 = time.monotonic()
            r = await _send(c, "w", "still served", "n-1")
            took = time.monotonic() - t0
        status = Path(f"/proc/{lane}/status").read_text().splitlines()
        rss = int(next(line.split()[1] for line in status if line.startswith("VmRSS")))
    finally:
        for s in socks:
            s.close()
    assert r.status_code == 200 and took < 1.0, took
    assert rss < 64 * 1024, f"the lane holds {rss} kB for callers that do not read"


async def test_a_caller_answered_after_a_long_send_keeps_its_connection(lane_server, agent):
    """Found by CI under load (a restart under load, httpx.ReadError): the lane closed a
    caller as idle 5 s after it last *sent* anything, so a send answered after more than 5
    s (a slow agent, or a wait through a restart) had its connection closed at the next
    tick, and the caller's next request on it was reset. Idle now counts from the answer,
    as uvicorn counts its keep-alive; the next request on the same socket is answered."""
    async with lane_server.client() as c:
        await _workspace(c, "w", agent.url)
    served = lane_served(lane_server)

    def two_sends() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", lane_server.port)) as s:
            s.settimeout(30)
            s.sendall(_raw_send(json.dumps(send_body("slow:5.5", "long-1")).encode()))
            first = _read_answer(s)
            time.sleep(0.3)  # a few of the lane's ticks (50 ms): an idle close would be done
            s.sendall(_raw_send(json.dumps(send_body("after", "long-2")).encode()))
            return first, _read_answer(s)

    first, second = await asyncio.to_thread(two_sends)
    assert first.startswith(b"HTTP/1.1 200") and b'"slow:5.5"' in first
    assert second.startswith(b"HTTP/1.1 200") and b'"after"' in second
    assert lane_served(lane_server) >= served + 2  # both were the lane's own


async def test_a_caller_piped_to_python_is_closed_idle_as_uvicorn_closes_callers(lane_server):
    """A request the lane cannot frame (here `Transfer-Encoding: chunked`) turns its
    connection into a pipe to Python for good, so uvicorn's keep-alive is that caller's
    idle limit: 5 s, as for any caller. (A review caught a keep-alive of 60 s on the
    lane's sockets, meant for the lane's own connections, reaching these callers.)"""

    def piped() -> tuple[bytes, bytes, float]:
        with socket.create_connection(("127.0.0.1", lane_server.port)) as s:
            s.settimeout(30)
            s.sendall(
                b"GET /healthz HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            head = _read_answer(s)
            t0 = time.monotonic()
            s.settimeout(KEEP_ALIVE + 10)
            try:
                rest = s.recv(65536)  # b"": closed by Python, through the pipe
            except TimeoutError:
                rest = b"<still open>"
            return head, rest, time.monotonic() - t0

    head, rest, idle = await asyncio.to_thread(piped)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert rest == b"", rest
    assert KEEP_ALIVE - 1 <= idle <= KEEP_ALIVE + 3, idle


# the lane on PostgreSQL: what a review found (2026-12-04), each failing before its fix ---
@pytest.fixture
async def pg_lane(tmp_path: Path, call_failed: Any) -> AsyncIterator[tuple[BerthServer, str]]:
    """A berth on a fresh PostgreSQL database with its lane serving, and that database."""
    async with store_env("postgres") as db:
        with _serving(tmp_path, call_failed, **db) as server:
            yield server, db["BERTH_DATABASE_URL"]


@pytest.mark.postgres
async def test_a_flush_whose_commit_fails_forwards_nothing(pg_lane, agent):
    """An error at COMMIT (here a deferred constraint trigger; in life a failed fsync or
    a connection lost before the commit is confirmed) comes after the statement's rows:
    the lane reads every result, so nothing is forwarded and the send is Python's."""
    import asyncpg

    server, url = pg_lane
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'refused at commit'; END $$;"
            "CREATE CONSTRAINT TRIGGER boom AFTER INSERT ON deliveries DEFERRABLE "
            "INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.message_id LIKE 'boom%') "
            "EXECUTE FUNCTION boom()"
        )
        async with server.client() as c:
            await _workspace(c, "w", agent.url)
            r = await c.post(
                "/v1/workspaces/w/a2a",
                json=send_body("hi", "boom-1"),
                headers={"x-berth-wait": "0"},
            )
            await asyncio.sleep(0.5)
            # relayed: Python's accept hits the same trigger and answers an error
            assert r.status_code >= 500, r.text
            n = await conn.fetchval("SELECT count(*) FROM deliveries")
            assert n == 0 and agent.forwards["boom-1"] == 0
            # the lane goes on: the next send is its own
            ok = await _send(c, "w", "fine", "ok-1")
            assert ok.status_code == 200 and agent.forwards["ok-1"] == 1
        assert lane_served(server) == 1
        assert "lane: a flush failed" in server.log.read_text()
    finally:
        await conn.close()


@pytest.mark.postgres
async def test_an_agent_s_odd_content_type_is_python_s_and_fails_no_flush(pg_lane, agent):
    """A content type the lane cannot write as text into PostgreSQL's statement would fail
    every write of its flush (other workspaces' accepts, settles, lease renewals): the lane
    hands such an answer to Python, which settles it, and no flush fails."""
    got: list[str] = []

    def answer(body: bytes) -> bytes:  # a byte that is not UTF-8 in the content type
        got.append(json.loads(body)["params"]["message"]["messageId"])
        return _reply(body, b"application/json; x=\xff")

    odd = await RawAgent(answer).start()
    try:
        server, _ = pg_lane
        async with server.client() as c:
            await _workspace(c, "v", agent.url, max_concurrency=8)
            await _workspace(c, "e", odd.url + "/", max_concurrency=8)
            rs = await asyncio.gather(
                *(_send(c, "e", "x", f"e-{i}") for i in range(6)),
                *(_send(c, "v", "y", f"v-{i}") for i in range(6)),
            )
            assert [r.status_code for r in rs] == [200] * 12
            for r in rs[:6]:  # done, its reply kept, by Python
                d = (await c.get(f"/v1/deliveries/{r.headers['x-berth-delivery-id']}")).json()
                assert d["status"] == "done" and d["forwards"] == 1, d
            assert all(agent.forwards[f"v-{i}"] == 1 for i in range(6))
        assert "a flush failed" not in server.log.read_text()
        assert sorted(got) == [f"e-{i}" for i in range(6)]
        assert lane_served(server) == 6  # the other workspace's, all the lane's
    finally:
        odd.server.close()


@pytest.mark.postgres
async def test_a_lane_that_cannot_reach_the_database_relays_and_comes_back(pg_lane, agent):
    """The lane starts again while PostgreSQL takes no new connection: it serves berth's
    port all the same (every send relayed to Python, which has its pool), and writes
    again itself once it can connect."""
    import asyncpg

    server, url = pg_lane
    name = url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(url.rsplit("/", 1)[0] + "/postgres")
    try:
        async with server.client() as c:
            await _workspace(c, "w", agent.url)
            assert (await _send(c, "w", "a", "a-1")).status_code == 200
            await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            os.kill(_lane_pid(server), signal.SIGKILL)
            require_lane(server)  # started again, and serving the port
            before = lane_served(server)
            r = await _send(c, "w", "b", "b-1")
            assert r.status_code == 200, r.text  # Python's, through the lane's relay
            assert lane_served(server) == before
            await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
            deadline = time.monotonic() + 15
            i = 0
            while lane_served(server) == before:  # the lane connects again
                assert time.monotonic() < deadline, "the lane never wrote again"
                assert (await _send(c, "w", "c", f"c-{i}")).status_code == 200
                i += 1
                await asyncio.sleep(0.3)
        log = server.log.read_text()
        assert "cannot connect to PostgreSQL" in log
        assert log.count("fast lane exited") <= 1  # the kill; no exit of its own since
    finally:
        await admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        await admin.close()
