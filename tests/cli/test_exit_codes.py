"""Exit codes by class, and what the CLI says on each unhappy path, against a real berth."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import berth as berth_pkg
from berth.cli.errors import Exit
from tests.cli.conftest import api, berth, cli_env, echo, wait_status
from tests.e2e.harness import ADMIN, free_port


def test_version_and_help_document_every_exit_code(server):
    v = berth(None, "--version")
    assert v.returncode == 0 and v.stdout.strip() == f"berth {berth_pkg.__version__}"
    h = berth(None, "--help")
    assert h.returncode == 0
    for code in Exit:
        assert f"\n{int(code):>3}  " in h.stdout, code


def test_every_option_says_its_default_and_variable():
    out = berth(None, "serve", "--help").stdout
    for opt in ("--host", "--port", "--data-dir", "--database-url", "--redis-url", "--log-format"):
        line = " ".join(out.split(opt + " ", 2)[-1].split())  # the option's (wrapped) help
        assert "default" in line and "BERTH_" + opt[2:].upper().replace("-", "_") in line, opt
    assert "BERTH_HEARTBEAT_TIMEOUT" in out  # the settings without an option, with defaults
    create = " ".join(berth(None, "ws", "create", "--help").stdout.split())
    assert "BERTH_SERVER" in create and "BERTH_ADMIN_TOKEN" in create
    assert "(default 60)" in create and "(default 1)" in create


def test_usage(server):
    assert berth(server, "ws").returncode == Exit.USAGE
    assert berth(server, "send", "x").returncode == Exit.USAGE
    bad = berth(server, "ws", "create", "Not_A_Name", "--", "true")
    assert bad.returncode == Exit.USAGE and "lowercase" in bad.stderr
    assert berth(server, "ws", "create", "x", "--env", "NOEQUALS", "--", "true").returncode == 2


def test_not_found(server):
    r = berth(server, "ws", "show", "no-such-ws")
    assert r.returncode == Exit.NOT_FOUND and "no-such-ws" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1
    assert berth(server, "deliveries", "show", "no-such-id").returncode == Exit.NOT_FOUND
    assert berth(server, "send", "no-such-ws", "hi").returncode == Exit.NOT_FOUND


def test_auth(server, tmp_path):
    r = berth(server, "ws", "ls", BERTH_ADMIN_TOKEN="bad_wrong")
    assert r.returncode == Exit.AUTH and "invalid admin token" in r.stderr
    # no token anywhere: not in the environment, no admin_token in the data dir
    env = cli_env(None, BERTH_SERVER=server.url, BERTH_DATA_DIR=str(tmp_path))
    p = subprocess.run(
        [sys.executable, "-m", "berth", "ws", "ls"], env=env, capture_output=True, text=True
    )
    assert p.returncode == Exit.AUTH and "no admin token" in p.stderr
    # the token file of the data dir is found
    (tmp_path / "admin_token").write_text(ADMIN + "\n")
    p = subprocess.run(
        [sys.executable, "-m", "berth", "ws", "ls"], env=env, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr


def test_unreachable():
    r = berth(
        None, "ws", "ls", BERTH_SERVER=f"http://127.0.0.1:{free_port()}", BERTH_ADMIN_TOKEN="x"
    )
    assert r.returncode == Exit.UNREACHABLE and "cannot reach berth" in r.stderr


def test_send_to_a_paused_workspace_says_so_at_once_and_exits_6_when_it_gives_up(server):
    echo(server, "held")
    assert api(server, "POST", "/v1/workspaces/held/pause").status_code == 200
    p = subprocess.Popen(
        [sys.executable, "-m", "berth", "send", "held", "wait for me", "--wait", "10"],
        env=cli_env(server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stderr is not None
    first = p.stderr.readline()
    noted = time.monotonic()
    assert "held is paused" in first and "berth ws resume held" in first
    assert p.poll() is None  # said before waiting, not after
    rest = p.stderr.read()
    assert p.wait(60) == Exit.PENDING
    assert time.monotonic() - noted >= 9  # the note came at once; the 10 s wait followed
    assert "still delivering" in rest and "deliveries show" in rest
    # it is still delivered once the workspace runs again
    assert berth(server, "ws", "resume", "held").returncode == 0
    dl = api(server, "GET", "/v1/workspaces/held/deliveries").json()["deliveries"]
    assert len(dl) == 1
    deadline = time.monotonic() + 30
    while api(server, "GET", f"/v1/deliveries/{dl[0]['id']}").json()["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_send_with_wait_0_is_not_a_failure(server):
    echo(server, "nowait")
    r = berth(server, "send", "nowait", "later", "--wait", "0")
    assert r.returncode == 0 and "accepted: delivery" in r.stdout


def test_a_dead_letter_is_berths_word_not_an_agent_error(tmp_path):
    from tests.e2e.harness import BerthServer

    s = BerthServer(tmp_path / "b", env={"BERTH_MAX_ATTEMPTS": "1"}).start()
    try:
        echo(s, "poisoned")
        r = berth(s, "send", "poisoned", "crash now")
        assert r.returncode == Exit.FAILED
        assert "berth did not deliver this message: dead" in r.stderr
        assert "-32603" not in r.stderr and "agent answered" not in r.stderr
        assert "deliveries retry" in r.stderr
    finally:
        s.stop()
        s.kill9()


def test_restarting_a_paused_workspace_points_to_resume(server):
    echo(server, "napping")
    assert api(server, "POST", "/v1/workspaces/napping/pause").status_code == 200
    r = berth(server, "ws", "restart", "napping")
    assert r.returncode == Exit.FAILED
    assert "paused" in r.stderr and "berth ws resume napping" in r.stderr


def test_a_failed_start_shows_its_reason_and_create_exits_1(server, tmp_path):
    r = berth(
        server, "ws", "create", "broken", "--", sys.executable, "missing_agent.py", cwd=tmp_path
    )
    assert r.returncode == Exit.FAILED, r.stdout + r.stderr
    assert "broken failed to start" in r.stderr and "exited with code 2" in r.stderr
    assert "missing_agent.py" in r.stderr  # the log tail says what python could not open
    ls = berth(server, "ws", "ls")
    row = next(line for line in ls.stdout.splitlines() if line.startswith("broken "))
    assert "failed" in row and "exited with code 2" in row
    sent = berth(server, "send", "broken", "anyone?", "--wait", "1")
    assert sent.returncode == Exit.PENDING
    assert "broken is failed; restart failed: the agent exited with code 2" in sent.stderr
    assert "berth ws restart broken" in sent.stderr


def test_a_relative_command_path_resolves_against_the_creators_folder(server, tmp_path):
    agent = tmp_path / "agents" / "my_echo.py"
    agent.parent.mkdir()
    agent.write_text("from berth.examples.echo import main\n\nmain()\n")
    r = berth(
        server,
        "ws",
        "create",
        "relative",
        "--json",
        "--",
        sys.executable,
        "agents/my_echo.py",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    ws = json.loads(r.stdout)
    assert ws["status"] == "online" and ws["command"] == [sys.executable, str(agent)]
    assert berth(server, "send", "relative", "hi").stdout.strip() == "echo: hi"
    assert Path(wait_status(server, "relative", "online")["state_dir"]) != tmp_path
