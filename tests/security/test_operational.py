"""/metrics behind a token when one is configured, or on a listen address of its own
(issue 10)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import ADMIN, BerthServer, free_port

pytestmark = pytest.mark.slow


def _a_workspace(c: httpx.Client) -> None:
    r = c.post(
        "/v1/workspaces",
        json={"name": "m", "runtime": "external"},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert r.status_code == 201, r.text


def test_metrics_token(tmp_path: Path) -> None:
    server = BerthServer(tmp_path / "berth", env={"BERTH_METRICS_TOKEN": "scrape-me"}).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            _a_workspace(c)  # the series are per workspace
            anon = c.get("/metrics")
            assert anon.status_code == 401 and anon.json()["error"]["code"] == "unauthorized"
            wrong = c.get("/metrics", headers={"authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_token"
            for token in ("scrape-me", ADMIN):
                ok = c.get("/metrics", headers={"authorization": f"Bearer {token}"})
                assert ok.status_code == 200 and "berth_queue_depth" in ok.text
            # the metrics token is for /metrics only
            assert (
                c.get("/v1/workspaces", headers={"authorization": "Bearer scrape-me"}).status_code
                == 401
            )
            assert c.get("/healthz").status_code == 200
    finally:
        server.stop()
        server.kill9()


def test_metrics_on_a_listen_address_of_its_own_and_openapi_for_the_operator(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {
        "BERTH_METRICS_ADDRESS": f"127.0.0.1:{port}",
        "BERTH_METRICS_TOKEN": "scrape-me",
        "BERTH_OPENAPI": "admin",
    }
    server = BerthServer(tmp_path / "berth", env=env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            auth = {"authorization": f"Bearer {ADMIN}"}
            _a_workspace(c)  # the series are per workspace
            assert c.get("/metrics", headers=auth).status_code == 404  # not on berth's port
            assert c.get("/openapi.json").status_code == 401
            doc = c.get("/openapi.json", headers=auth)
            assert doc.status_code == 200 and "/v1/workspaces" in doc.json()["paths"]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as m:
            anon = m.get("/metrics")
            assert anon.status_code == 401 and anon.headers["www-authenticate"] == "Bearer"
            assert m.get("/metrics", headers={"authorization": "Bearer nope"}).status_code == 401
            ok = m.get("/metrics", headers={"authorization": "Bearer scrape-me"})
            assert ok.status_code == 200 and "berth_queue_depth" in ok.text
            assert ok.headers["content-type"].startswith("text/plain")
            om = m.get(
                "/metrics",
                headers={
                    "authorization": "Bearer scrape-me",
                    "accept": "application/openmetrics-text",
                },
            )
            assert om.headers["content-type"].startswith("application/openmetrics-text")
            # nothing else is served there, the API least of all
            assert m.get("/v1/workspaces", headers=auth).status_code == 404
            assert m.post("/metrics", headers=auth).status_code == 405
    finally:
        server.stop()
        server.kill9()
