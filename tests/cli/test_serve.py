"""`berth serve`: one server per data dir, its log lines, the demo's curl line, and the
agent of docs/sdk.md run exactly as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.cli.conftest import api, berth, cli_env, echo, wait_status
from tests.e2e.harness import ADMIN, BerthServer, free_port

ROOT = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_a_second_server_on_a_data_dir_refuses_and_touches_nothing(tmp_path):
    data = tmp_path / "b"
    first = BerthServer(data).start()
    second_port = free_port()
    try:
        before = echo(first, "keeper")
        lock = (data / "berth.lock").read_text()
        assert not (data / "admin_token").exists()  # the first one has its token from the env
        t0 = time.monotonic()
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "berth",
                "serve",
                "--data-dir",
                str(data),
                "--port",
                str(second_port),
            ],
            env=cli_env(None),  # no token: past the lock it would write one into the data dir
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - t0
        assert p.returncode == 1, p.stderr
        assert "another berth server is using the data dir" in p.stderr
        assert f"pid {first.proc.pid}" in p.stderr and first.url in p.stderr  # type: ignore[union-attr]
        assert took < 20 and "Traceback" not in p.stderr  # at once: no database, no agents
        with __import__("pytest").raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{second_port}/healthz", timeout=1)
        time.sleep(3)  # anything the second one might have set off would show by now
        after = wait_status(first, "keeper", "online")
        assert after["pid"] == before["pid"] and _alive(before["pid"])
        assert after["restart_count"] == before["restart_count"] == 0
        assert after["crash_count"] == 0
        assert (data / "berth.lock").read_text() == lock
        assert not (data / "admin_token").exists()
        assert berth(first, "send", "keeper", "still here").stdout.strip() == "echo: still here"
    finally:
        first.kill9()
    # the kernel released the lock with the process: a new server starts on the data dir
    third = BerthServer(data, port=first.port).start()
    try:
        back = wait_status(third, "keeper", "online")
        assert back["pid"] != before["pid"]
        lock = json.loads((data / "berth.lock").read_text())
        assert lock["pid"] == third.proc.pid  # type: ignore[union-attr]
    finally:
        third.stop()
        third.kill9()


def _log_lines(server: BerthServer) -> list[str]:
    return server.log.read_text().splitlines()


def _wait_log(server: BerthServer, pattern: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in _log_lines(server):
            if re.search(pattern, line):
                return line
        time.sleep(0.1)
    raise AssertionError(
        f"no log line matches {pattern!r}:\n" + "\n".join(_log_lines(server)[-40:])
    )


def test_the_server_logs_state_changes_restart_phases_and_dead_letters(tmp_path):
    s = BerthServer(tmp_path / "b", env={"BERTH_MAX_ATTEMPTS": "1", "DOCKER_HOST": ""}).start()
    try:
        echo(s, "talker")
        _wait_log(s, r"INFO berth\.events: workspace talker: offline -> provisioning$")
        _wait_log(s, r"INFO berth\.events: workspace talker: provisioning -> online$")
        assert berth(s, "ws", "restart", "talker").returncode == 0
        for phase in ("draining", "stopping", "requeue", "starting", "replay"):
            _wait_log(s, rf"restart [0-9a-f]{{8}} of talker: {phase}")
        _wait_log(s, r"restart [0-9a-f]{8} of talker done in \d+\.\d\d s \(drain by the agent")
        assert berth(s, "send", "talker", "crash now", "--message-id", "poison-1").returncode == 1
        _wait_log(s, r"WARNING berth\.events: dead letter: message poison-1 to talker \(delivery ")
        time.sleep(1)  # a second line, if any, would come with the next flow batch
        log = s.log.read_text()
        assert log.count("dead letter: message poison-1 ") == 1, log
        # no Docker engine configured here: at most a DEBUG note, never an exception at INFO
        if not os.path.exists("/var/run/docker.sock"):
            assert "docker" not in log.lower(), log
        assert "Traceback" not in log and "FileNotFoundError" not in log
    finally:
        s.stop()
        s.kill9()


def test_log_format_json_is_one_object_per_line(tmp_path):
    s = BerthServer(tmp_path / "b", args=["--log-format", "json"]).start()
    try:
        echo(s, "jsonlog")
        line = _wait_log(s, r'"message": "workspace jsonlog: provisioning -> online"')
        doc = json.loads(line)
        assert doc["level"] == "info" and doc["logger"] == "berth.events"
        assert doc["event"]["kind"] == "workspace.state" and doc["event"]["state"] == "online"
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", doc["ts"])
    finally:
        s.stop()
        s.kill9()
    records = [x for x in _log_lines(s) if x.startswith("{")]
    assert len(records) >= 4 and all(json.loads(x)["message"] for x in records)


def test_the_demo_curl_line_sends_a_fresh_message_each_time(tmp_path):
    s = BerthServer(tmp_path / "b", args=["--demo"]).start()
    try:
        line = _wait_log(s, r"^\s+curl -s ")
        lines = _log_lines(s)
        at = lines.index(line)
        command = (lines[at].strip().rstrip("\\") + " " + lines[at + 1].strip()).replace(
            "$BERTH_ADMIN_TOKEN", ADMIN
        )
        replies = [
            subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
            for _ in range(2)
        ]
        assert [json.loads(r.stdout)["result"]["message"]["parts"][0]["text"] for r in replies] == [
            "echo: hello",
            "echo: hello",
        ]
        ids = {
            d["message_id"]
            for d in api(s, "GET", "/v1/workspaces/demo-echo/deliveries").json()["deliveries"]
        }
        assert len(ids) == 2 and "m1" not in ids
    finally:
        s.stop()
        s.kill9()


def sdk_example() -> str:
    text = (ROOT / "docs" / "sdk.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if "serve(" in b and "AgentCard(" in b)


def test_the_sdk_example_runs_as_written(server, tmp_path):
    (tmp_path / "my_agent.py").write_text(sdk_example())
    r = berth(
        server, "ws", "create", "shout", "--json", "--", sys.executable, "my_agent.py", cwd=tmp_path
    )
    assert r.returncode == 0, r.stdout + r.stderr
    ws = json.loads(r.stdout)
    assert ws["status"] == "online" and ws["command"][-1] == str(tmp_path / "my_agent.py")
    assert berth(server, "send", "shout", "hello").stdout.strip() == "HELLO"
    card = api(server, "GET", "/v1/workspaces/shout/.well-known/agent-card.json").json()
    assert card["name"] == "shout"
    assert berth(server, "ws", "restart", "shout").returncode == 0  # drains and comes back
    assert berth(server, "send", "shout", "again").stdout.strip() == "AGAIN"
    log = berth(server, "ws", "logs", "shout").stdout
    assert "not spec-compliant" not in log and "Traceback" not in log
    assert not re.search(r"\bwarn(ing)?\b", log, flags=re.I), log
