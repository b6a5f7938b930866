"""Atomic writes (core/files.py) and the CLI plumbing every entry point shares (core/cli.py).

Run: pytest tests/test_plumbing.py
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from core import cli, files


# --- atomic writes --------------------------------------------------------------------------
def test_write_atomic_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "out.bin"
    assert files.write_bytes_atomic(target, b"one") == target
    assert files.write_bytes_atomic(target, b"two") == target
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_write_atomic_stages_beside_the_target(tmp_path: Path) -> None:
    seen: list[Path] = []
    files.write_atomic(tmp_path / "t.txt", lambda tmp: seen.append(tmp) or tmp.write_text("x"))
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".t.txt.")
    assert not seen[0].exists() and (tmp_path / "t.txt").read_text() == "x"


def test_a_failed_write_changes_none_of_the_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")

    def fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        files.write_many_atomic({a: lambda tmp: tmp.write_text("new a"), b: fail})
    assert a.read_text() == "old a" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # temp files removed
    files.write_many_atomic({a: lambda tmp: tmp.write_text("new a"),
                             b: lambda tmp: tmp.write_text("new b")})  # fmt: skip
    assert (a.read_text(), b.read_text()) == ("new a", "new b")


def test_write_json_atomic_is_indented_with_a_final_newline(tmp_path: Path) -> None:
    path = files.write_json_atomic(tmp_path / "m.json", {"b": [1, 2], "a": "é"})
    assert path.read_text() == json.dumps({"b": [1, 2], "a": "é"}, indent=2) + "\n"


# --- CLI plumbing ---------------------------------------------------------------------------
@pytest.mark.parametrize("word", ["1", "true", "TRUE", " Yes ", "on"])
def test_true_words(word: str) -> None:
    assert cli.parse_bool(word) is True


@pytest.mark.parametrize("word", ["0", "false", "No", "off "])
def test_false_words(word: str) -> None:
    assert cli.parse_bool(word) is False


def test_other_words_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError) as err:
        cli.parse_bool("maybe")
    assert str(err.value) == ("expected one of 1/true/yes/on/0/false/no/off, got 'maybe'")
    with pytest.raises(ValueError):
        cli.parse_bool("")


def test_run_cli_exit_codes(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    class Bad(Exception):
        pass

    class Down(Exception):
        pass

    def raise_(exc: Exception):
        def body():
            raise exc

        return body

    assert cli.run_cli(lambda: "done: 3 rows", (Bad,)) == 0
    assert capsys.readouterr().out == "done: 3 rows\n"
    assert cli.run_cli(lambda: 42, (Bad,)) == 0  # only a string is printed
    assert capsys.readouterr().out == ""
    assert cli.run_cli(raise_(Bad("column x is missing")), (Bad,), (Down,)) == 2
    assert capsys.readouterr().err == "error: column x is missing\n"
    assert cli.run_cli(raise_(Down("no route")), (Bad,), (Down,)) == 1
    assert capsys.readouterr().err == "error: cannot reach a store or service: no route\n"
    assert cli.run_cli(raise_(Down("refused")), (Bad,), (Down,), service="the event store") == 1
    assert capsys.readouterr().err == "error: cannot reach the event store: refused\n"
    assert caplog.records == []  # reported once, on stderr, not logged a second time
    with pytest.raises(KeyError):  # anything else is a bug: it propagates
        cli.run_cli(raise_(KeyError("k")), (Bad,), (Down,))


def test_setup_logging_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: calls.append(kw))
    cli.setup_logging()
    cli.setup_logging(verbose=True)
    assert [c["level"] for c in calls] == [logging.INFO, logging.DEBUG]
    assert calls[0]["format"] == "%(asctime)s %(levelname)s %(name)s: %(message)s"
