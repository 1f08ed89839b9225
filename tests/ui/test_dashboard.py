"""The operator's view, in a real Chromium against a real berth: workspaces going online,
messages appearing and finishing, a restart's phases, a dead letter retried, a delivery
found by its messageId. Nothing on the page is reloaded: what changes arrives by itself."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.harness import BerthServer
from tests.ui.conftest import create, send, sign_in, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def row(page: Any, name: str) -> Any:
    return page.locator(f'[data-testid="workspace-row"][data-name="{name}"]')


def test_a_workspace_goes_online_live(page: Any, server: BerthServer, api: httpx.Client) -> None:
    sign_in(page)
    page.get_by_test_id("live").and_(page.locator('[data-state="live"]')).wait_for()
    create(api, "ui-online")  # created after the page loaded: it must appear without a reload
    r = row(page, "ui-online")
    r.wait_for()
    r.and_(page.locator('[data-status="online"]')).wait_for(timeout=30_000)
    assert r.get_by_test_id("status").inner_text() == "online"
    assert r.get_by_test_id("queue").inner_text() == "0"
    assert r.get_by_test_id("restarts").inner_text() == "0"
    assert re.search(r"\d+ s ago|just now", r.inner_text()), r.inner_text()


def test_a_message_appears_and_finishes(page: Any, server: BerthServer, api: httpx.Client) -> None:
    create(api, "ui-flow")
    sign_in(page)
    row(page, "ui-flow").and_(page.locator('[data-status="online"]')).wait_for()
    row(page, "ui-flow").click()
    page.wait_for_url("**#/ws/ui-flow")
    page.get_by_test_id("delivery-rows").wait_for()
    mid = f"flow-{uuid.uuid4().hex[:8]}"
    r = send(api, "ui-flow", "sleep:6 hello dashboard", mid, wait=0)
    assert r.status_code == 202, r.text
    d = page.locator(f'[data-testid="delivery-row"][data-message-id="{mid}"]')
    # seen while it is still running, then done, without a reload
    d.and_(page.locator('[data-status="in_flight"], [data-status="queued"]')).wait_for()
    page.get_by_test_id("ws-in-flight").filter(has_text="1").wait_for()
    d.and_(page.locator('[data-status="done"]')).wait_for(timeout=30_000)
    assert "echo: sleep:6 hello dashboard" in d.inner_text()
    d.click()
    detail = page.get_by_test_id("delivery-detail")
    detail.and_(page.locator(f'[data-id="{r.json()["delivery_id"]}"]')).wait_for()
    assert page.get_by_test_id("request-text").inner_text() == "sleep:6 hello dashboard"
    assert page.get_by_test_id("reply-text").inner_text() == "echo: sleep:6 hello dashboard"
    assert '"messageId": "' + mid in page.get_by_test_id("request").inner_text()


def test_find_a_delivery_by_message_id(page: Any, server: BerthServer, api: httpx.Client) -> None:
    create(api, "ui-find")
    wait_for(lambda: api.get("/v1/workspaces/ui-find").json()["status"] == "online", what="online")
    target = f"needle-{uuid.uuid4().hex[:8]}"
    for i in range(5):
        mid = target if i == 2 else f"hay-{i}-{uuid.uuid4().hex[:6]}"
        assert send(api, "ui-find", f"text {i}", mid, wait=30).status_code == 200
    sign_in(page)
    page.goto("/ui#/ws/ui-find")
    page.get_by_test_id("find-message-id").fill(target)
    page.get_by_test_id("find").click()
    detail = page.get_by_test_id("delivery-detail")
    detail.wait_for()
    assert page.get_by_test_id("detail-message-id").inner_text() == target
    assert page.get_by_test_id("request-text").inner_text() == "text 2"
    assert page.get_by_test_id("reply-text").inner_text() == "echo: text 2"
    page.get_by_test_id("find-message-id").fill("no-such-message")
    page.get_by_test_id("find").click()
    assert "No delivery of messageId" in page.get_by_test_id("find-error").inner_text()
    # the status filter keeps only what it names
    page.get_by_test_id("status-filter").select_option("dead")
    page.get_by_test_id("delivery-rows").filter(has_text="No dead delivery").wait_for()
    page.get_by_test_id("status-filter").select_option("done")
    page.locator('[data-testid="delivery-row"]').nth(4).wait_for()
    statuses = page.locator('[data-testid="delivery-row"]').evaluate_all(
        "rows => rows.map(r => r.dataset.status)"
    )
    assert statuses == ["done"] * 5


def test_restart_shows_its_phases_live(page: Any, server: BerthServer, api: httpx.Client) -> None:
    create(api, "ui-restart", drain_seconds=10)
    wait_for(lambda: api.get("/v1/workspaces/ui-restart").json()["status"] == "online", what="up")
    sign_in(page)
    page.goto("/ui#/ws/ui-restart")
    page.get_by_test_id("workspace-head").locator('[data-status="online"]').wait_for()
    # a message in flight, so the drain has something to wait for
    r = send(api, "ui-restart", "sleep:2 in flight during the restart", wait=0)
    did = r.json()["delivery_id"]
    wait_for(lambda: api.get(f"/v1/deliveries/{did}").json()["status"] == "in_flight", what="sent")
    page.get_by_test_id("restart-button").click()
    page.wait_for_url("**#/ws/ui-restart/restarts")
    card = page.get_by_test_id("restart").first
    # seen while it runs: a phase after "requested" shows before the cycle is done
    card.and_(page.locator('[data-finished="false"]')).wait_for()
    card.get_by_test_id("phase").nth(1).wait_for()
    card.and_(page.locator('[data-phase="done"]')).wait_for(timeout=60_000)
    phases = card.get_by_test_id("phase").evaluate_all("rs => rs.map(r => r.dataset.phase)")
    rec = api.get("/v1/workspaces/ui-restart/restarts").json()["restarts"][0]
    assert phases == [p["phase"] for p in rec["phases"]], (phases, rec["phases"])
    assert "draining" in phases and "starting" in phases
    segs = card.get_by_test_id("segment").count()
    assert segs == len(phases)
    report = card.get_by_test_id("drain-report").text_content() or ""
    assert "Drain report" in report and "drained itself" in report, report
    # the message in flight during the restart finished inside the drain, and says so
    assert api.get(f"/v1/deliveries/{did}").json()["message_id"] in report
    assert card.get_by_test_id("restart-state").inner_text() == "done"
    page.get_by_test_id("ws-restarts").filter(has_text="1").wait_for()
    assert api.get(f"/v1/deliveries/{did}").json()["status"] == "done"
    page.get_by_test_id("tab-logs").click()
    page.get_by_test_id("log").filter(has_text=re.compile(r"\S")).wait_for()
    wait_for(lambda: "loading" not in page.get_by_test_id("log").inner_text(), what="log")


def test_retry_a_dead_letter(page: Any, server: BerthServer, api: httpx.Client) -> None:
    create(api, "ui-poison")
    wait_for(lambda: api.get("/v1/workspaces/ui-poison").json()["status"] == "online", what="up")
    mid = f"poison-{uuid.uuid4().hex[:8]}"
    r = send(api, "ui-poison", "crash on purpose", mid, wait=0)
    did = r.json()["delivery_id"]
    sign_in(page)
    page.get_by_test_id("nav-dead").click()
    page.wait_for_url("**#/dead")
    dead = page.locator(f'[data-testid="dead-row"][data-message-id="{mid}"]')
    dead.wait_for(timeout=90_000)  # three crashes, three restarts
    assert "poison" in dead.inner_text() and "3/3" in dead.inner_text()
    page.get_by_test_id("dead-count").filter(has_text=re.compile(r"[1-9]")).wait_for()
    dead.click()
    page.get_by_test_id("delivery-detail").wait_for()
    assert page.get_by_test_id("request-text").inner_text() == "crash on purpose"
    dead.get_by_test_id("retry").click()
    # queued again, forwarded again (it crashes the agent again, so it ends dead again)
    wait_for(lambda: api.get(f"/v1/deliveries/{did}").json()["forwards"] > 3, 90, "re-sent")
    d = wait_for(lambda: _dead(api, did), 90, "dead again")
    # each forward reached the agent and crashed it (an SDK agent registers only once its
    # port accepts connections, so none was refused and went uncounted)
    assert d["forwards"] == 6 and d["attempts"] == 3, d
    page.locator(f'[data-testid="dead-row"][data-message-id="{mid}"]').filter(
        has_text="3/6"
    ).wait_for(timeout=30_000)


def _dead(api: httpx.Client, delivery_id: str) -> dict[str, Any] | None:
    d: dict[str, Any] = api.get(f"/v1/deliveries/{delivery_id}").json()
    return d if d["status"] == "dead" else None


def test_pause_cancel_a_queued_message_resume(
    page: Any, server: BerthServer, api: httpx.Client
) -> None:
    create(api, "ui-pause")
    wait_for(lambda: api.get("/v1/workspaces/ui-pause").json()["status"] == "online", what="up")
    sign_in(page)
    page.goto("/ui#/ws/ui-pause")
    head = page.get_by_test_id("workspace-head")
    head.locator('[data-status="online"]').wait_for()
    page.get_by_test_id("pause").click()
    head.locator('[data-status="paused"]').wait_for()
    keep, drop = f"keep-{uuid.uuid4().hex[:6]}", f"drop-{uuid.uuid4().hex[:6]}"
    kept = send(api, "ui-pause", "wait for me", keep, wait=0).json()["delivery_id"]
    dropped = send(api, "ui-pause", "cancel me", drop, wait=0).json()["delivery_id"]
    row_ = page.locator(f'[data-testid="delivery-row"][data-message-id="{drop}"]')
    row_.and_(page.locator('[data-status="queued"]')).wait_for()
    page.get_by_test_id("ws-queue").filter(has_text="2").wait_for()
    row_.get_by_test_id("cancel").click()
    row_.and_(page.locator('[data-status="canceled"]')).wait_for()
    assert api.get(f"/v1/deliveries/{dropped}").json()["status"] == "canceled"
    assert api.get(f"/v1/deliveries/{kept}").json()["status"] == "queued"
    # nothing to cancel once it is not queued: the button is gone
    assert row_.get_by_test_id("cancel").count() == 0
    page.get_by_test_id("resume").click()
    head.locator('[data-status="online"]').wait_for(timeout=30_000)
    page.locator(f'[data-testid="delivery-row"][data-message-id="{keep}"]').and_(
        page.locator('[data-status="done"]')
    ).wait_for(timeout=30_000)
    assert api.get(f"/v1/deliveries/{dropped}").json()["status"] == "canceled"


def test_an_unknown_workspace_says_so(page: Any, server: BerthServer) -> None:
    sign_in(page)
    page.goto("/ui#/ws/no-such-workspace")
    assert (
        "No workspace named no-such-workspace"
        in page.get_by_test_id("workspace-error").inner_text()
    )
