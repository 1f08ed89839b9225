"""`berth ws deploy` as a user runs it: a replace to a new env, the record with versions,
a canary promoted by hand, and the refusals with their exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from berth.cli.errors import Exit
from tests.cli.conftest import api, berth, cli_env
from tests.e2e.harness import ECHO


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
    follow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "berth",
            "ws",
            "deploy",
            "dep",
            "--canary",
            "30%",
            "--canary-seconds",
            "120",
            "--env",
            "ECHO_PREFIX=v3",
            "--json",
        ],
        env=cli_env(server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_canary(server, 30)
        p = berth(server, "ws", "deploy", "dep", "--promote")
        assert p.returncode == 0, p.stdout + p.stderr
        assert "canary: promote (by hand)" in p.stdout, p.stdout
        out, err = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 0, err
    record = json.loads(out)
    assert record["phase"] == "done" and record["versions"]["to"] == 3
    assert set(record["versions"]["figures"]) == {"2", "3"}
    # a canary rolled back by hand: the follower exits 1 and says so; the spec is unchanged
    follow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "berth",
            "ws",
            "deploy",
            "dep",
            "--canary",
            "10",
            "--env",
            "ECHO_PREFIX=v4",
        ],
        env=cli_env(server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_canary(server, 10)
        rb = berth(server, "ws", "deploy", "dep", "--rollback")
        assert rb.returncode == 0 and "canary: rollback (by hand)" in rb.stdout, rb.stdout
        out4, err4 = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == Exit.FAILED and "rolled back" in err4, (out4, err4)
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


def _wait_canary(server, percent: int) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        peer = api(server, "GET", "/v1/workspaces/dep").json()["peer"]
        if peer is not None and peer["canary"] == percent:
            return
        time.sleep(0.2)
    raise AssertionError("the canary did not start")
