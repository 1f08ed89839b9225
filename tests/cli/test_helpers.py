"""The CLI's small pure parts: path resolution, log tails, human times, settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from berth.cli.output import ago, duration
from berth.cli.workspaces import _new_lines, absolute_paths
from berth.settings import ClientSettings, Settings


def test_relative_paths_become_absolute_and_nothing_else_changes(tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text("")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "run").write_text("")
    (tmp_path / "conf").mkdir()
    got = absolute_paths(
        ["python", "agent.py", "-m", "pkg", "--flag=x", "./bin/run", "conf/", "hello", "/abs"],
        tmp_path,
    )
    assert got == [
        "python",  # a program name is looked up on PATH, even if a file "python" were here
        str(tmp_path / "agent.py"),
        "-m",
        "pkg",
        "--flag=x",
        str(tmp_path / "bin" / "run"),
        str(tmp_path / "conf"),
        "hello",  # names no file here
        "/abs",
    ]
    assert absolute_paths(["./bin/run"], tmp_path) == [str(tmp_path / "bin" / "run")]
    assert absolute_paths(["missing.py"], tmp_path) == ["missing.py"]


@pytest.mark.parametrize(
    ("old", "new", "added"),
    [
        ([], ["a", "b"], ["a", "b"]),
        (["a", "b"], ["a", "b"], []),
        (["a", "b"], ["a", "b", "c"], ["c"]),
        (["a", "b", "c"], ["b", "c", "d", "e"], ["d", "e"]),  # the tail window moved
        (["x"], ["y", "z"], ["y", "z"]),  # no overlap: all of it is new
    ],
)
def test_new_log_lines(old: list[str], new: list[str], added: list[str]) -> None:
    assert _new_lines(old, new) == added


def test_human_times() -> None:
    assert ago(None) == "-"
    assert ago(100.0, now=100.5) == "just now"
    assert ago(100.0, now=112.0) == "12 s ago"
    assert ago(0.0, now=180.0) == "3 min ago"
    assert ago(0.0, now=7200.0) == "2 h ago"
    assert ago(0.0, now=3 * 86400.0) == "3 d ago"
    assert ago(10.0, now=0.0) == "in 10 s"
    assert duration(0.4123) == "0.412 s" and duration(12.34) == "12.3 s"
    assert duration(125) == "2 min 5 s" and duration(None) == "-"


def test_the_cli_reads_its_environment_through_settings() -> None:
    env = {"BERTH_SERVER": "http://h:1", "BERTH_ADMIN_TOKEN": "t", "BERTH_DATA_DIR": "/d"}
    s = ClientSettings.from_env(env)
    assert (s.server, s.admin_token, s.token_file) == ("http://h:1", "t", Path("/d/admin_token"))
    assert ClientSettings.from_env(env, server="http://o:2").server == "http://o:2"
    assert ClientSettings.from_env({}).server == "http://127.0.0.1:8080"
    assert Settings.from_env({"BERTH_LOG_FORMAT": "json"}).log_format == "json"


def test_no_stray_environment_reads_in_the_cli() -> None:
    import berth.cli as pkg

    for f in Path(pkg.__file__).parent.glob("*.py"):
        assert "os.environ" not in f.read_text() and "getenv" not in f.read_text(), f


def test_data_prints_as_it_is_not_as_markup(capsys: pytest.CaptureFixture[str]) -> None:
    from berth.cli.output import Out

    out = Out()
    out.line("[bold]x[/] :smile: [errno 2]")
    out.note("[red]reason[/]")
    out.fields([("reason", "[dim]poison[/]")])
    got = capsys.readouterr()
    assert got.out == "[bold]x[/] :smile: [errno 2]\nreason  [dim]poison[/]\n"
    assert got.err == "[red]reason[/]\n"
