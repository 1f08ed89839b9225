"""The demo workspace `berth serve --demo` creates: the echo example, ready to message."""

from __future__ import annotations

import logging
import sys

from berth.bootstrap import Container
from berth.domain.errors import NotFound

__all__ = ["ensure_demo", "DEMO_NAME"]
DEMO_NAME = "demo-echo"
log = logging.getLogger("berth")


async def ensure_demo(c: Container) -> None:
    try:
        ws = await c.workspaces.get(DEMO_NAME)
    except NotFound:
        ws, _ = await c.workspaces.create(
            {"name": DEMO_NAME, "command": [sys.executable, "-m", "berth.examples.echo"]})
    url = c.settings.advertised_url
    token_file = c.settings.data_path / "admin_token"
    auth = f"$(cat {token_file})" if not c.settings.admin_token else "$BERTH_ADMIN_TOKEN"
    print(
        f"\nberth is serving {url}; demo workspace '{ws.name}' is {ws.state.value}.\n"
        f"Message it:\n"
        f"  berth send {DEMO_NAME} 'hello'            (from this folder)\n"
        f"  curl -s {url}/v1/workspaces/{DEMO_NAME}/a2a -H \"authorization: Bearer {auth}\" \\\n"
        f"    -H 'a2a-version: 1.0' -H 'content-type: application/json' -d '{{\"jsonrpc\":\"2.0\",\"id\":1,"
        f"\"method\":\"SendMessage\",\"params\":{{\"message\":{{\"role\":\"ROLE_USER\",\"messageId\":\"m1\","
        f"\"parts\":[{{\"text\":\"hello\"}}]}}}}}}'\n",
        file=sys.stderr, flush=True,
    )
