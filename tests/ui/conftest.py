"""Browser tests: Debian's Chromium driven by Playwright for Python, against a real `berth serve`.

The browser is the system's (`apt-get install chromium`), never one Playwright downloads.
Without it (or without Playwright) the tests skip, and fail under CI=true.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.harness import ADMIN, ECHO, BerthServer
from tests.services import _unavailable

CHROMIUM = os.environ.get("BERTH_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# Module scope, not session: Playwright's sync API runs an event loop in this thread while
# it is started, and every async test after it (pytest-asyncio) would find that loop
# running. Stopped at the end of each UI module, it leaves the rest of the suite alone.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BerthServer]:
    """One real berth for a module's tests; each test names its own workspaces."""
    data = tmp_path_factory.mktemp("berth-ui")
    # poison tests crash the echo agent many times: no crash-loop stop in the way
    s = BerthServer(data / "berth", env={"BERTH_CRASH_LOOP_LIMIT": "100"}).start()
    try:
        yield s
    finally:
        s.stop()
        s.kill9()


@pytest.fixture
def api(server: BerthServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=120
    ) as c:
        yield c


@pytest.fixture
def page(browser: Any, server: BerthServer) -> Iterator[Any]:
    """A fresh browser context (no cookie) whose every request is recorded: the dashboard
    must never reach past berth's own origin."""
    ctx = browser.new_context(base_url=server.url, viewport={"width": 1400, "height": 900})
    ctx.set_default_timeout(30_000)
    seen: list[str] = []
    ctx.on("request", lambda r: seen.append(r.url))
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        yield pg
        foreign = [u for u in seen if not u.startswith(server.url) and not u.startswith("data:")]
        assert not foreign, f"the dashboard reached outside berth: {foreign}"
        assert not errors, f"script errors on the page: {errors}"
    finally:
        ctx.close()


def sign_in(page: Any, token: str = ADMIN) -> None:
    page.goto("/ui")
    page.get_by_test_id("token").fill(token)
    page.get_by_test_id("sign-in").click()
    page.wait_for_url("**/ui")
    page.get_by_test_id("workspaces").wait_for()


def create(api: httpx.Client, name: str, **spec: Any) -> dict[str, Any]:
    r = api.post("/v1/workspaces", json={"name": name, "command": ECHO, **spec})
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not met after {timeout} s (last: {last!r})")


def send(
    api: httpx.Client, name: str, text: str, message_id: str | None = None, wait: float = 0
) -> httpx.Response:
    mid = message_id or f"ui-{uuid.uuid4().hex[:12]}"
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {"message": {"role": "ROLE_USER", "messageId": mid, "parts": [{"text": text}]}},
    }
    return api.post(
        f"/v1/workspaces/{name}/a2a",
        json=body,
        headers={"a2a-version": "1.0", "x-berth-wait": str(wait)},
    )
