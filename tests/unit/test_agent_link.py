"""The seed's behaviours, one test each: the Docker rewrite, URL resolution, the signal."""

import json
import socket

import pytest
from aiohttp import web

from berth.adapters.agent_http import HttpAgentClient
from berth.adapters.memory_bus import MemoryCache
from berth.adapters.memory_store import MemoryStore
from berth.domain.workspace import Runtime, Workspace
from berth.services.agent_link import AgentLink, SignalOutcome, rewrite_for_docker, url_cache_key
from tests.e2e.harness import serve_app

WS_ID = "0123456789abcdef-rest-of-id"


def ws(runtime=Runtime.DOCKER, url=None) -> Workspace:
    return Workspace(id=WS_ID, name="w", runtime=runtime, token_hash="x", agent_url=url)


# rewrite_for_docker ---------------------------------------------------------------
def test_non_loopback_url_is_unchanged():
    assert (
        rewrite_for_docker("http://agent.internal:9000", ws(), True) == "http://agent.internal:9000"
    )


def test_loopback_unchanged_when_workspace_is_not_docker():
    assert (
        rewrite_for_docker("http://127.0.0.1:5555", ws(Runtime.PROCESS), True)
        == "http://127.0.0.1:5555"
    )


def test_loopback_unchanged_when_berth_is_not_in_docker():
    assert rewrite_for_docker("http://127.0.0.1:5555", ws(), False) == "http://127.0.0.1:5555"


def test_loopback_rewritten_when_both_hold():
    assert rewrite_for_docker("http://127.0.0.1:5555", ws(), True) == "http://ws-0123456789ab:8000"
    assert (
        rewrite_for_docker("http://localhost:5555/a2a", ws(), True)
        == "http://ws-0123456789ab:8000/a2a"
    )


def test_docker_detection(tmp_path, monkeypatch):
    from berth.settings import Settings

    assert Settings.from_env({"BERTH_IN_DOCKER": "1"}).running_in_docker() is True
    assert Settings.from_env({"BERTH_IN_DOCKER": "0"}).running_in_docker() is False
    monkeypatch.setattr("os.path.exists", lambda p: p == "/.dockerenv")
    assert Settings.from_env({}).running_in_docker() is True


# resolution ------------------------------------------------------------------------
async def make_link(client=None, store=None, in_docker=False):
    store = store or MemoryStore()
    cache = MemoryCache()
    return AgentLink(store, cache, client or HttpAgentClient(), in_docker=in_docker), store, cache


async def test_cache_hit_does_not_read_the_database():
    class NoDb(MemoryStore):
        async def get_workspace(self, ref):
            raise AssertionError("database read on a cache hit")

    link, _, cache = await make_link(store=NoDb())
    await cache.set(url_cache_key(WS_ID), "http://127.0.0.1:7000")
    assert await link.resolve(ws(Runtime.PROCESS)) == "http://127.0.0.1:7000"


async def test_cache_miss_reads_the_database_and_caches_again():
    link, store, cache = await make_link()
    await store.create_workspace(ws(Runtime.PROCESS, url="http://127.0.0.1:7001"))
    assert await link.resolve(ws(Runtime.PROCESS)) == "http://127.0.0.1:7001"
    assert await cache.get(url_cache_key(WS_ID)) == "http://127.0.0.1:7001"


async def test_resolution_applies_the_docker_rewrite():
    link, store, _ = await make_link(in_docker=True)
    await store.create_workspace(ws(Runtime.DOCKER, url="http://127.0.0.1:7002"))
    assert await link.resolve(ws()) == "http://ws-0123456789ab:8000"


async def test_database_error_skips_the_signal_and_goes_on():
    class Broken(MemoryStore):
        async def get_workspace(self, ref):
            raise OSError("database is down")

    link, _, _ = await make_link(store=Broken())
    res = await link.signal_restart(
        ws(Runtime.PROCESS), restart_id="r", drain_seconds=1, reason=None
    )
    assert res.outcome is SignalOutcome.UNRESOLVED and "database is down" in res.detail


# the signal ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def agent():
    """A real HTTP agent whose /signals/restart_pending answer each test chooses."""
    state = {"status": 200, "body": None, "seen": []}

    async def signal(request):
        state["seen"].append(await request.json())
        return web.Response(
            status=state["status"],
            body=json.dumps(state["body"]).encode(),
            content_type="application/json",
        )

    app = web.Application()
    app.router.add_post("/signals/restart_pending", signal)
    runner, state["url"] = await serve_app(app)
    yield state
    await runner.cleanup()


async def signal_with(agent_url):
    client = HttpAgentClient()
    link, store, _ = await make_link(client=client)
    await store.create_workspace(ws(Runtime.PROCESS, url=agent_url))
    try:
        return await link.signal_restart(
            ws(Runtime.PROCESS), restart_id="r1", drain_seconds=2, reason="test"
        )
    finally:
        await client.close()


async def test_200_records_the_drain_report(agent):
    agent["body"] = {
        "jsonrpc": "2.0",
        "id": "x",
        "result": {"drained": True, "in_flight": 0, "completed": ["m1"], "unfinished": []},
    }
    res = await signal_with(agent["url"])
    assert res.outcome is SignalOutcome.DRAINED and res.report["completed"] == ["m1"]
    sent = agent["seen"][0]
    assert sent["method"] == "signals/restart_pending" and sent["jsonrpc"] == "2.0"
    assert sent["params"] == {
        "workspace_id": WS_ID,
        "restart_id": "r1",
        "drain_seconds": 2,
        "reason": "test",
    }


@pytest.mark.parametrize("status", [404, 405, 501])
async def test_no_drain_statuses_mean_berth_side_drain(agent, status):
    agent["status"], agent["body"] = status, {"detail": "no"}
    assert (await signal_with(agent["url"])).outcome is SignalOutcome.NO_DRAIN


async def test_connection_refused_goes_on():
    res = await signal_with(f"http://127.0.0.1:{free_port()}")
    assert res.outcome is SignalOutcome.UNREACHABLE


async def test_garbage_answer_goes_on(agent):
    agent["body"] = {"hello": "world"}
    assert (await signal_with(agent["url"])).outcome is SignalOutcome.ERROR
