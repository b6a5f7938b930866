"""Property-based fuzz of every Rank and Feedback field against a real server (small budget).

``python -m serving`` runs as a subprocess over the tiny Feast repo and model with an
SQLite event log; ``benchmarks.fuzz`` draws requests (well-formed and hostile values of
every field) and checks each answer: OK and a correct ranking or stored events for a
well-formed message, INVALID_ARGUMENT naming the field for a bad one (and for a string
that is not UTF-8), never INTERNAL, and the process alive and SERVING afterwards. Derandomized: CI
sends the same requests every run. The 10,000-case run is ``python -m benchmarks.fuzz``
(docs/BENCHMARKS.md).

    pytest tests/test_fuzz_serving.py
"""

from __future__ import annotations

import argparse
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings

from benchmarks import processes
from benchmarks.fuzz import Fuzzer, fuzz, item_columns, known_ids
from benchmarks.fuzz_cases import SQL_LIKE, Case, ItemColumns, all_cases, feedback_problems
from serving.api.tailrank.v1 import ranking_pb2

pytestmark = pytest.mark.integration
CASES = 300  # 10-20 s on 2 cores; the benchmark sends 10,000


@pytest.fixture(scope="module")
def fuzzer(writable_feature_repo: Path, tiny_model_dir: Path, tmp_path_factory) -> Iterator[Fuzzer]:
    """The server over the module's own copy of the tiny repo: Feedback and UpsertItems
    write to its online store."""
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'events.db'}"
    args = argparse.Namespace(server_workers=4, ort_threads=1)
    proc, target, metrics_port = processes.launch(
        Path(writable_feature_repo), Path(tiny_model_dir), None, 1, args, url, log_level="ERROR"
    )
    try:
        processes.wait_up(proc, metrics_port, 1, timeout_s=180, poll_s=0.2)
        _, items = known_ids(Path(writable_feature_repo) / "data")
        checker = Fuzzer(target, url, items, proc)
        yield checker
        checker.close()
    finally:
        processes.stop(proc)


def test_every_field_fuzzed_server_answers_by_the_rules_and_stays_up(
    fuzzer: Fuzzer, writable_feature_repo: Path
) -> None:
    features = Path(writable_feature_repo) / "data"
    users, items = known_ids(features)
    columns = item_columns(features)
    assert columns is not None and columns.text  # the tiny repo can upsert: fuzz it too
    fuzz(fuzzer, all_cases(users, items, columns=columns), CASES, health_every=100)
    assert fuzzer.serving(), "health is not SERVING after the fuzz"
    seen = {(method, kind) for method, kind, _ in fuzzer.codes}
    # the budget reaches every kind of request, so a pass means each was checked
    assert seen >= {
        ("Rank", "well-formed"), ("Rank", "bad"), ("Feedback", "well-formed"),
        ("Feedback", "bad"), ("Rank", "off-schema"), ("UpsertItems", "well-formed"),
        ("UpsertItems", "bad"),
    }  # fmt: skip
    assert sum(n for (_, kind, code), n in fuzzer.codes.items() if code == "OK") > CASES // 5
    assert not any(code in ("INTERNAL", "UNKNOWN") for *_, code in fuzzer.codes)


def test_sql_looking_and_odd_ids_are_stored_verbatim(fuzzer: Fuzzer) -> None:
    events = [
        ranking_pb2.FeedbackEvent(
            user_id=sql, item_id=sql[::-1] + "é\u202e🙂", event_type="click", request_id=f"r{k}'--"
        )  # fmt: skip
        for k, sql in enumerate(SQL_LIKE)
    ]
    request = ranking_pb2.FeedbackRequest(events=events)
    case = Case("Feedback", request, feedback_problems(request, now_ms=0))
    assert case.well_formed
    assert fuzzer.check(case) == []  # OK, accepted = 8, the rows read back equal the events
    with sqlite3.connect(fuzzer.engine.url.database) as conn:  # and the tables are all there
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        stored = conn.execute(
            "SELECT user_id FROM feedback ORDER BY id DESC LIMIT ?", (len(SQL_LIKE),)
        ).fetchall()
    assert {"impressions", "feedback"} <= tables
    assert sorted(user for (user,) in stored) == sorted(SQL_LIKE)


def test_the_check_fails_on_a_wrong_answer(fuzzer: Fuzzer, writable_feature_repo: Path) -> None:
    """The oracle is not vacuous: a case whose oracle is wrong (a bad request said to be
    well-formed, a good one said to be bad) is reported, naming the code received."""
    _, items = known_ids(Path(writable_feature_repo) / "data")
    bad = ranking_pb2.RankRequest(user_id="", candidate_ids=items[:2])
    good = ranking_pb2.RankRequest(user_id="u", candidate_ids=items[:2])
    assert fuzzer.check(Case("Rank", bad, frozenset())) == [
        "INVALID_ARGUMENT to a well-formed Rank: user_id is empty: send a non-empty id"
    ]
    problems = fuzzer.check(Case("Rank", good, frozenset({"top_k"})))
    assert problems and problems[0].startswith("OK ''")
    fuzzer.failures.clear()


def test_strategies_draw_each_field_hostile() -> None:
    """Every field of the three RPCs gets a bad value within 300 draws."""
    users, items = ["u1", "u2"], ["i1", "i2", "i3"]
    columns = ItemColumns(text=("title", "brand"), numeric=("price",))
    fields: set[str] = set()

    @settings(max_examples=300, derandomize=True, database=None)
    @given(all_cases(users, items, max_candidates=5, columns=columns))
    def draw(case: Case) -> None:  # "events[2].user_id" -> "user_id", "items[0].text['x']"
        fields.update(re.sub(r"\[.*?\]", "", p).split(".")[-1] for p in case.problems)

    draw()
    assert fields >= {
        "user_id", "candidate_ids", "top_k", "tail_weight", "request_id", "events",
        "item_id", "event_type", "timestamp_ms", "items", "text", "numeric",
    }  # fmt: skip
