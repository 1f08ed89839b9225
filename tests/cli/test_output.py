"""--json on every command, TTY vs piped output, and a closed pipe, against a real berth."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from tests.cli.conftest import api, berth, cli_env, echo

PHASES = ("draining", "stopping", "requeue", "starting", "replay")
ESC = "\x1b["


def ok_json(server, *args: str):  # noqa: ANN001, ANN201 - test helper
    at = args.index("--") if "--" in args else len(args)
    r = berth(server, *args[:at], "--json", *args[at:])
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return json.loads(r.stdout)


@pytest.mark.timeout(900)  # some thirty CLI runs; each is seconds on a loaded machine
def test_json_on_every_command(server, tmp_path):
    ws = ok_json(server, "ws", "create", "js", "--", *_echo())
    assert ws["status"] == "online" and ws["token"].startswith("bwc_")  # its caller credential
    assert [w["name"] for w in ok_json(server, "ws", "ls")].count("js") == 1
    shown = ok_json(server, "ws", "show", "js")
    assert shown["id"] == ws["id"] and shown["last_restart"]["trigger"] == "startup"
    reply = ok_json(server, "send", "js", "hello json", "--message-id", "js-1")
    assert reply["result"]["message"]["parts"][0]["text"] == "echo: hello json"
    rows = ok_json(server, "deliveries", "js")
    assert [d["message_id"] for d in rows] == ["js-1"]
    one = ok_json(server, "deliveries", "show", "js-1", "--ws", "js")
    assert one["id"] == rows[0]["id"] and one["workspace"] == "js"
    assert one["request"]["params"]["message"]["messageId"] == "js-1"
    assert one["reply"]["result"]["message"]["parts"][0]["text"] == "echo: hello json"
    assert ok_json(server, "deliveries", "show", rows[0]["id"])["request"] == one["request"]
    record = ok_json(server, "ws", "restart", "js", "--reason", "json please")
    assert record["phase"] == "done" and [p["phase"] for p in record["phases"]] == list(PHASES)
    history = ok_json(server, "ws", "restarts", "js")
    assert history[0]["id"] == record["id"] and history[0]["reason"] == "json please"
    assert ok_json(server, "ws", "restarts", "js", record["id"])["id"] == record["id"]
    paused = ok_json(server, "ws", "pause", "js")
    assert paused["workspace"]["status"] == "paused" and paused["drain_report"]["drained"]
    queued = berth(server, "send", "js", "held", "--message-id", "js-2", "--wait", "0", "--json")
    assert queued.returncode == 0 and json.loads(queued.stdout)["status"] == "queued"
    canceled = ok_json(server, "deliveries", "cancel", "js-2", "--ws", "js")
    assert canceled["status"] == "canceled"
    assert ok_json(server, "deliveries", "retry", canceled["id"])["status"] == "queued"
    resumed = ok_json(server, "ws", "resume", "js")
    assert resumed["workspace"]["status"] == "online" and resumed["restart"]["phase"] == "done"
    events = berth(server, "events", "--ws", "js", "--limit", "200", "--json")
    kinds = [json.loads(line)["kind"] for line in events.stdout.splitlines()]
    assert "restart.finished" in kinds and "workspace.state" in kinds
    assert "delivery.canceled" in kinds
    top = ok_json(server, "top")
    assert any(w["name"] == "js" for w in top["workspaces"])
    logs = berth(server, "ws", "logs", "js", "--json")
    assert all(json.loads(x)["workspace"] == "js" for x in logs.stdout.splitlines())
    assert any("berth: starting" in json.loads(x)["line"] for x in logs.stdout.splitlines())
    gone = ok_json(server, "ws", "rm", "js")
    assert gone["workspace"]["status"] == "removed"


def test_human_output_has_no_raw_dicts_or_epoch_floats(server):
    echo(server, "human")
    show = berth(server, "ws", "show", "human").stdout
    assert re.search(r"created\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(", show)
    assert not re.search(r"\d{10}\.\d+", show) and "{" not in show
    pause = berth(server, "ws", "pause", "human")
    assert pause.returncode == 0 and "{" not in pause.stdout and "'" not in pause.stdout
    assert "human: paused" in pause.stdout and "drain: drained by the agent" in pause.stdout
    resume = berth(server, "ws", "resume", "human")
    assert resume.returncode == 0 and "offline" not in resume.stdout
    assert resume.stdout.strip().endswith("human: online")
    assert berth(server, "send", "human", "hi").returncode == 0
    header = berth(server, "deliveries", "human").stdout.splitlines()[0].split()
    assert "FORWARDS" in header and "FAILURES" in header and "ATTEMPTS" not in header
    assert "FAILURES" in berth(server, "deliveries", "--help").stdout


def test_restart_piped_prints_each_phase_once_with_its_time(server):
    echo(server, "piped")
    r = berth(server, "ws", "restart", "piped")
    assert r.returncode == 0, r.stderr
    assert ESC not in r.stdout
    lines = [x for x in r.stdout.splitlines() if x.startswith("  ")]
    assert [x.split()[0] for x in lines] == list(PHASES)
    assert all(re.match(r"^\s+\w+\s+\d+\.\d+ s", x) for x in lines), lines
    assert "drain: drained by the agent" in r.stdout and "restart done in" in r.stdout


def test_restart_on_a_terminal_is_one_updating_line_per_phase(server):
    echo(server, "tty", drain_seconds=3)
    # a long message in flight, and a drain window of 3 s: the draining phase lasts 3 s,
    # however long the CLI takes to start
    r = api(
        server,
        "POST",
        "/v1/workspaces/tty/a2a",
        json=_send("sleep:60 long"),
        headers={"x-berth-wait": "0", "a2a-version": "1.0"},
    )
    deadline = time.monotonic() + 30
    while api(server, "GET", f"/v1/deliveries/{r.json()['delivery_id']}").json()["status"] != (
        "in_flight"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    out, code = _in_pty(["ws", "restart", "tty", "--drain-seconds", "3"], server)
    assert code == 0, out
    assert ESC + "1A" in out or ESC + "2K" in out  # rich redraws the lines in place
    final = _last_frame(out)
    for phase in PHASES:
        assert re.search(rf"✓\s+{phase}\s+\d+\.\d+ s", final), (phase, final)
    # while it runs (a spinner, not ✓) its time is counted here and rises; once ended the
    # line shows the time the server recorded, which may be a poll's worth below the last
    # count (CI under load: 3.304 s counted, 3.211 s recorded)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    shown = re.findall(r"(\S)\s+draining\s+(\d+\.\d+) s", plain)
    live = [float(x) for mark, x in shown if mark != "✓"]
    assert len(set(live)) >= 2 and live == sorted(live)  # shown rising, live
    draining = [float(x) for mark, x in shown if mark == "✓"]
    assert draining and draining[-1] >= 2.5
    assert "restart done in" in final and "1 unfinished (requeued)" in final


def test_a_closed_pipe_ends_quietly(server):
    echo(server, "piper")
    p = subprocess.Popen(
        [sys.executable, "-m", "berth", "events", "-f", "--limit", "0", "--ws", "piper"],
        env=cli_env(server),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.5)  # connected
        assert berth(server, "ws", "restart", "piper").returncode == 0
        assert p.stdout is not None
        assert p.stdout.readline()  # one event read, then the reader goes away
        p.stdout.close()
        assert berth(server, "ws", "restart", "piper").returncode == 0
        code = p.wait(30)
    finally:
        p.kill()
    err = p.stderr.read().decode() if p.stderr else ""
    assert code == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def _echo() -> list[str]:
    return [sys.executable, "-m", "berth.examples.echo"]


def _send(text: str) -> dict[str, object]:
    msg = {"role": "ROLE_USER", "messageId": f"m-{time.time()}", "parts": [{"text": text}]}
    return {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": msg}}


def _in_pty(args: list[str], server) -> tuple[str, int]:  # noqa: ANN001
    master, slave = pty.openpty()
    env = cli_env(server, TERM="xterm-256color", COLUMNS="120", LINES="40")
    p = subprocess.Popen(
        [sys.executable, "-m", "berth", *args], env=env, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif p.poll() is not None:
            break
    os.close(master)
    return b"".join(chunks).decode(errors="replace"), p.wait(10)


def _last_frame(out: str) -> str:
    """What the terminal shows at the end: the text after the last redraw."""
    tail = out.rsplit(ESC + "2K", 1)[-1]
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", tail)


def test_top_is_live_on_a_terminal_and_a_snapshot_when_piped(server):
    echo(server, "watched")
    snap = berth(server, "top")
    assert snap.returncode == 0 and ESC not in snap.stdout
    row = next(x for x in snap.stdout.splitlines() if x.startswith("watched "))
    assert "online" in row
    master, slave = pty.openpty()
    p = subprocess.Popen(
        [sys.executable, "-m", "berth", "top", "--interval", "0.3"],
        env=cli_env(server, TERM="xterm-256color", COLUMNS="120", LINES="40"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    out = b""
    frames = re.compile(rb"\d\d:\d\d:\d\d \xc2\xb7 \d+ workspaces?")
    deadline = time.monotonic() + 60
    first_at = None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            out += os.read(master, 65536)
        if first_at is None and frames.search(out):
            first_at = time.monotonic()
        if first_at is not None and time.monotonic() - first_at > 4:
            break
    p.send_signal(2)  # Ctrl-C
    code = p.wait(10)
    os.close(master)
    text = out.decode(errors="replace")
    assert code == 130
    assert len(set(re.findall(r"\d\d:\d\d:\d\d · \d+ workspaces?", text))) >= 2  # redrawn
    assert "watched" in text and "Traceback" not in text


def test_events_in_words(server):
    echo(server, "storyteller")
    assert berth(server, "ws", "restart", "storyteller").returncode == 0
    out = berth(server, "events", "--ws", "storyteller", "--limit", "100").stdout
    assert re.search(r"^\d\d:\d\d:\d\d\s+workspace\.state\s+storyteller\s+\w+ → \w+$", out, re.M)
    assert re.search(r"restart\.finished\s+storyteller\s+[0-9a-f]{8} done$", out, re.M)
