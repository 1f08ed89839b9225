"""The demo workspace `berth serve --demo` creates: the echo example, ready to message."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

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
            {"name": DEMO_NAME, "command": [sys.executable, "-m", "berth.examples.echo"]}
        )
    # say "online" only when it is: the first start takes a couple of seconds, and the agent
    # registers over HTTP, so this waits in the background while the server serves
    c.supervisor.once("demo-announce", _announce(c, ws.id))


async def _announce(c: Container, ws_id: str) -> None:
    await c.roster.wait_for(ws_id, lambda w: w is None or w.state.value in ("online", "failed"), 30)
    ws = c.roster.peek(ws_id)
    if ws is None:
        return
    berth_cli = _cli_path()
    url = c.settings.advertised_url
    flags = ""  # the CLI's defaults are this server and ./.berth
    if url != "http://127.0.0.1:8080":
        flags += f" --server {url}"
    if c.settings.data_path.resolve() != (Path.cwd() / ".berth").resolve():
        flags += f" --data-dir {c.settings.data_path}"
    token_file = c.settings.data_path / "admin_token"
    auth = f"$(cat {token_file})" if not c.settings.admin_token else "$BERTH_ADMIN_TOKEN"
    print(
        f"\nberth is serving {url}; demo workspace '{ws.name}' is {ws.state.value}.\n"
        f"Message it:\n"
        f"  {berth_cli} send {DEMO_NAME} 'hello'{flags}\n"
        f"  {berth_cli} ws restart {DEMO_NAME}{flags}      (live phases, then the drain report)\n"
        f'  curl -s {url}/v1/workspaces/{DEMO_NAME}/a2a -H "authorization: Bearer {auth}" \\\n'
        f'    -H \'a2a-version: 1.0\' -H \'content-type: application/json\' -d \'{{"jsonrpc":"2.0","id":1,'
        f'"method":"SendMessage","params":{{"message":{{"role":"ROLE_USER",'
        f'"messageId":"\'$(cat /proc/sys/kernel/random/uuid)\'","parts":[{{"text":"hello"}}]}}}}}}\'\n'
        f"  (a fresh messageId each time: berth answers a repeated one with the first reply)\n",
        file=sys.stderr,
        flush=True,
    )


def _cli_path() -> str:
    """This install's `berth`, as a user in another terminal would type it: `.venv/bin/berth`
    from the folder berth runs in (scripts/serve-demo puts it on PATH only for itself)."""
    exe = Path(sys.executable).parent / "berth"
    if not exe.exists():
        return shutil.which("berth") or "berth"
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)
