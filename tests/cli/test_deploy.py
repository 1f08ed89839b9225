"""`berth ws deploy` as a user runs it: a replace to a new env, the record with versions,
a canary promoted by hand, and the refusals with their exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from berth.cli.errors import Exit
from tests.cli.conftest import api, berth, cli_env
from tests.e2e.harness import ECHO, BerthServer


def test_deploy_replace_then_a_canary_promoted_by_hand(server):
    r = berth(server, "ws", "create", "dep", "--restart-mode", "replace", "--", *ECHO)
    assert r.returncode == 0, r.stderr
    r = berth(server, "ws", "deploy", "dep", "--env", "ECHO_PREFIX=v2", "--reason", "v2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "deploying dep" in r.stdout and "version 1 -> 2: done" in r.stdout, r.stdout
    shown = json.loads(berth(server, "ws", "show", "dep", "--json").stdout)
    assert shown["version"] == 2 and shown["restart_mode"] == "replace"
    human = berth(server, "ws", "show", "dep").stdout
    assert "replace" in human and "version" in human
    # a canary, followed by a second CLI that promotes it
    canary = ("--canary", "30%", "--canary-seconds", "120", "--env", "ECHO_PREFIX=v3", "--json")
    p, code, out, err = _decided_by_hand(server, "promote", 30, *canary)
    assert "canary: promote (by hand)" in p.stdout, p.stdout
    assert code == 0, err
    record = json.loads(out)
    assert record["phase"] == "done" and record["versions"]["to"] == 3
    assert set(record["versions"]["figures"]) == {"2", "3"}
    # a canary rolled back by hand: the follower exits 1 and says so; the spec is unchanged
    rb, code, out4, err4 = _decided_by_hand(
        server, "rollback", 10, "--canary", "10", "--env", "ECHO_PREFIX=v4"
    )
    assert "canary: rollback (by hand)" in rb.stdout, rb.stdout
    assert code == Exit.FAILED and "rolled back" in err4, (out4, err4)
    assert "version 3 -> 4: rolled_back" in out4, out4
    assert api(server, "GET", "/v1/workspaces/dep").json()["version"] == 3
    listed = berth(server, "ws", "restarts", "dep", record["id"])
    assert "canary: promote (by hand)" in listed.stdout and "agent_errors" in listed.stdout.lower()


def test_deploy_refusals(server):
    r = berth(server, "ws", "create", "plainer", "--", *ECHO)
    assert r.returncode == 0, r.stderr
    r = berth(server, "ws", "deploy", "plainer", "--mode", "replace")
    assert r.returncode == Exit.FAILED and "restart_mode replace" in r.stderr, r.stderr
    r = berth(server, "ws", "deploy", "plainer", "--promote")
    assert r.returncode == Exit.FAILED and "no canary" in r.stderr
    r = berth(server, "ws", "deploy", "plainer", "--canary", "lots")
    assert r.returncode == Exit.USAGE
    assert berth(server, "ws", "deploy", "nope").returncode == Exit.NOT_FOUND


def _decided_by_hand(
    server: BerthServer, decision: str, percent: int, *deploy: str
) -> tuple[subprocess.CompletedProcess[str], int, str, str]:
    """`berth ws deploy dep *deploy` (a canary) followed by one CLI while a second decides
    it by hand (`--promote` / `--rollback`) once it takes `percent` % of new messages.
    Returns the deciding CLI's result and the follower's exit code, stdout and stderr."""
    follow = subprocess.Popen(
        [sys.executable, "-m", "berth", "ws", "deploy", "dep", *deploy],
        env=cli_env(server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_canary(server, percent)
        decided = berth(server, "ws", "deploy", "dep", f"--{decision}")
        assert decided.returncode == 0, decided.stdout + decided.stderr
        out, err = follow.communicate(timeout=60)
    finally:
        follow.kill()
    return decided, follow.returncode, out, err


def _wait_canary(server: BerthServer, percent: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        peer = api(server, "GET", "/v1/workspaces/dep").json()["peer"]
        if peer is not None and peer["canary"] == percent:
            return
        time.sleep(0.2)
    raise AssertionError("the canary did not start")
