"""/metrics behind a token when one is configured (issue 10)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import ADMIN, BerthServer

pytestmark = pytest.mark.slow


def test_metrics_token(tmp_path: Path) -> None:
    server = BerthServer(tmp_path / "berth", env={"BERTH_METRICS_TOKEN": "scrape-me"}).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
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
