"""The screenshots in docs/img/: a real berth with a few workspaces at work, seen by the
system's Chromium.  Run: `.venv/bin/python -m tests.ui.screenshots` (about a minute)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from tests.e2e.harness import ADMIN, BerthServer
from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS, create, send, wait_for

OUT = Path(__file__).resolve().parents[2] / "docs" / "img"


def online(api: httpx.Client, name: str) -> None:
    wait_for(lambda: api.get(f"/v1/workspaces/{name}").json()["status"] == "online", 60, name)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="berth-shots-"))
    server = BerthServer(data / "berth", env={"BERTH_CRASH_LOOP_LIMIT": "100"}).start()
    try:
        with httpx.Client(
            base_url=server.url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=120
        ) as api:
            for name, conc in (("support-triage", 2), ("billing-agent", 1), ("research", 1)):
                create(api, name, max_concurrency=conc, drain_seconds=15)
            for name in ("support-triage", "billing-agent", "research"):
                online(api, name)
            for i, text in enumerate(
                ["hello", "summarise ticket 4812", "task refund order 991", "status of PR 77"]
            ):
                send(api, "support-triage", text, f"ticket-{4810 + i}", wait=30)
            send(api, "billing-agent", "crash on invoice 2231", "invoice-2231", wait=0)
            send(api, "research", "sleep:3 read the paper", "paper-1", wait=0)
            time.sleep(0.5)
            api.post("/v1/workspaces/research/restart", json={"reason": "new model config"})
            wait_for(lambda: api.get("/v1/dead-letters").json()["deliveries"], 90, "a dead letter")
            online(api, "billing-agent")
            send(api, "billing-agent", "invoice 2232", "invoice-2232", wait=30)
            wait_for(
                lambda: api.get("/v1/workspaces/research/restarts").json()["restarts"][0][
                    "finished_at"
                ],
                60,
                "the restart",
            )
            send(api, "support-triage", "sleep:30 long investigation", "ticket-4820", wait=0)
            send(api, "support-triage", "sleep:30 second investigation", "ticket-4821", wait=0)
            send(api, "support-triage", "sleep:1 queued behind them", "ticket-4822", wait=0)
            time.sleep(1.5)

        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            ctx = b.new_context(
                base_url=server.url, viewport={"width": 1360, "height": 860}, device_scale_factor=1
            )
            page = ctx.new_page()
            page.goto("/ui/login")
            page.get_by_test_id("token").fill("wrong")
            page.get_by_test_id("sign-in").click()
            page.get_by_test_id("login-error").wait_for()
            page.screenshot(path=str(OUT / "login.png"))
            page.get_by_test_id("token").fill(ADMIN)
            page.get_by_test_id("sign-in").click()
            page.get_by_test_id("workspace-row").nth(2).wait_for()
            page.get_by_test_id("dead-count").filter(has_text="1").wait_for()
            time.sleep(0.5)
            page.screenshot(path=str(OUT / "workspaces.png"))

            page.goto("/ui#/ws/support-triage")
            page.locator('[data-testid="delivery-row"][data-message-id="ticket-4812"]').click()
            page.get_by_test_id("reply-text").wait_for()
            time.sleep(0.3)
            page.screenshot(path=str(OUT / "workspace.png"))

            page.goto("/ui#/ws/research/restarts")
            page.get_by_test_id("drain-report").first.wait_for()
            time.sleep(0.3)
            page.screenshot(path=str(OUT / "restarts.png"))

            page.goto("/ui#/dead")
            page.get_by_test_id("dead-row").first.click()
            page.get_by_test_id("request-text").wait_for()
            time.sleep(0.3)
            page.screenshot(path=str(OUT / "dead-letters.png"))
            b.close()
    finally:
        server.stop()
        server.kill9()
    print(f"screenshots in {OUT}")


if __name__ == "__main__":
    main()
