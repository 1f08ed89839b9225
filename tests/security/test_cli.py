"""`berth creds …` and `berth ws allow|deny` against a real berth serve."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.e2e.harness import ADMIN, ECHO

pytestmark = pytest.mark.slow


def berth(server, *argv: str) -> subprocess.CompletedProcess[str]:
    opts = ["--server", server.url, "--token", ADMIN]
    at = argv.index("--") if "--" in argv else len(argv)  # after --: the agent's own argv
    return subprocess.run(
        [sys.executable, "-m", "berth", *argv[:at], *opts, *argv[at:]],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_creds_and_allow_from_the_cli(berth_server) -> None:
    made = berth(berth_server, "ws", "create", "a", "--allow", "caller:ci", "--", *ECHO)
    assert made.returncode == 0, made.stderr
    assert "caller credential workspace:a (shown once): bwc_" in made.stdout
    ext = berth(berth_server, "ws", "create", "svc", "--runtime", "external")
    assert "agent credential agent:svc (shown once): bwa_" in ext.stdout

    ci = berth(berth_server, "creds", "create", "ci", "--json")
    assert ci.returncode == 0, ci.stderr
    secret = json.loads(ci.stdout)["secret"]
    listed = berth(berth_server, "creds", "ls")
    assert listed.returncode == 0
    assert {"workspace:a", "agent:svc", "caller:ci"} <= {
        line.split()[0] for line in listed.stdout.splitlines()[1:]
    }
    assert secret not in listed.stdout and "bwc_" not in listed.stdout

    allow = berth(berth_server, "ws", "allow", "svc", "--from", "a", "--from", "caller:ci")
    assert allow.returncode == 0 and "workspace:a, caller:ci" in allow.stdout
    shown = json.loads(berth(berth_server, "ws", "show", "a", "--json").stdout)
    assert shown["allowed_callers"] == ["caller:ci"]  # given at create
    deny = berth(berth_server, "ws", "deny", "svc", "--from", "a")
    assert "caller:ci" in deny.stdout and "workspace:a" not in deny.stdout

    sent = berth(berth_server, "send", "a", "hello", "--message-id", "cli-1")
    assert sent.returncode == 0, sent.stderr
    table = berth(berth_server, "deliveries", "a").stdout.splitlines()
    assert table[0].split()[:4] == ["ID", "CALLER", "MESSAGE", "ID"]
    assert table[1].split()[1:3] == ["operator", "cli-1"]  # the caller, shown in the CLI

    rot = berth(berth_server, "creds", "rotate", "caller:ci")
    assert rot.returncode == 0 and "secret (shown once): bwc_" in rot.stdout
    assert secret not in rot.stdout
    rev = berth(berth_server, "creds", "revoke", "caller:ci")
    assert rev.returncode == 0 and "caller:ci revoked" in rev.stdout
    again = berth(berth_server, "creds", "rotate", "caller:ci")
    assert again.returncode == 1 and "revoked" in again.stderr
    missing = berth(berth_server, "creds", "revoke", "caller:nobody")
    assert missing.returncode == 3 and "credential_not_found" in missing.stderr  # not found
