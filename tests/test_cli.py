"""core.cli: the one true/false parser and the one exit-code rule every CLI shares."""

from __future__ import annotations

import pytest

from core.cli import FALSE_WORDS, TRUE_WORDS, parse_bool, run_cli
from serving.config import load_config
from serving.errors import ConfigError


@pytest.mark.parametrize("word", [*TRUE_WORDS, "TRUE", " Yes ", "On"])
def test_true_words(word: str) -> None:
    assert parse_bool(word) is True


@pytest.mark.parametrize("word", [*FALSE_WORDS, "FALSE", " no ", "Off"])
def test_false_words(word: str) -> None:
    assert parse_bool(word) is False


@pytest.mark.parametrize("word", ["", "maybe", "2", "y", "t"])
def test_other_words_are_refused(word: str) -> None:
    with pytest.raises(ValueError, match="expected one of"):
        parse_bool(word)


@pytest.mark.parametrize("word", [*TRUE_WORDS, *FALSE_WORDS, "Yes", "OFF"])
def test_server_env_reads_bools_with_the_same_words(word: str) -> None:
    assert load_config([], env={"TAILRANK_ITEM_CACHE": word}).item_cache is parse_bool(word)
    no_log = load_config([], env={"TAILRANK_NO_EVENT_LOG": word}).event_log_url is None
    assert no_log is parse_bool(word)


def test_server_env_refuses_a_bad_no_event_log() -> None:
    with pytest.raises(ConfigError, match="TAILRANK_NO_EVENT_LOG"):
        load_config([], env={"TAILRANK_NO_EVENT_LOG": "maybe"})


class Down(RuntimeError):
    pass


def _raise(exc: BaseException):
    def body() -> None:
        raise exc

    return body


def test_run_cli_prints_a_returned_string(capsys) -> None:
    assert run_cli(lambda: "done", bad_input=(ValueError,)) == 0
    assert capsys.readouterr().out == "done\n"
    assert run_cli(lambda: {"not": "printed"}, bad_input=(ValueError,)) == 0
    assert capsys.readouterr().out == ""


def test_run_cli_bad_input_is_2_with_one_error_line(capsys) -> None:
    assert run_cli(_raise(ValueError("fix column x")), bad_input=(ValueError,)) == 2
    err = capsys.readouterr().err
    assert err == "error: fix column x\n"


def test_run_cli_unavailable_is_1_and_names_the_service(capsys) -> None:
    code = run_cli(_raise(Down("refused")), (ValueError,), (Down,), service="the event store X")
    assert code == 1
    assert capsys.readouterr().err == "error: cannot reach the event store X: refused\n"


def test_run_cli_lets_other_errors_through() -> None:
    with pytest.raises(KeyError):
        run_cli(_raise(KeyError("bug")), bad_input=(ValueError,), unavailable=(Down,))
