"""Feedback validation (the Feedback RPC's rules) and the bulk import command.

pytest tests/test_feedback.py
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from serving import events_cli
from serving.api.tailrank.v1 import ranking_pb2
from serving.errors import ConfigError, InvalidArgument
from serving.eventlog import FeedbackRow, parse_feedback
from tests.fixtures.eventlog import count_rows

GOOD = {"user_id": "u1", "item_id": "i1", "event_type": "click", "timestamp_ms": 1_700_000_000_000}


def request(*events: dict) -> ranking_pb2.FeedbackRequest:
    return ranking_pb2.FeedbackRequest(events=list(events))


def test_valid_events_become_rows() -> None:
    rows = parse_feedback(
        request(
            GOOD,
            {**GOOD, "event_type": "purchase", "request_id": "req-7", "user_id": "ユーザー"},
            {**GOOD, "event_type": "cart", "timestamp_ms": 0},
        )
    )
    assert rows[0] == FeedbackRow(
        "u1", "i1", "click", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC), None
    )
    assert rows[1].request_id == "req-7" and rows[1].user_id == "ユーザー"
    assert abs(rows[2].occurred_at - datetime.now(UTC)) < timedelta(seconds=5)  # 0 = now


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"user_id": ""}, r"events\[1\]\.user_id is empty"),
        ({"item_id": ""}, r"events\[1\]\.item_id is empty"),
        ({"item_id": "日" * 86}, r"events\[1\]\.item_id is longer than 256 bytes"),
        ({"user_id": "a\x00b"}, r"events\[1\]\.user_id contains a NUL"),
        ({"event_type": "view"}, r"events\[1\]\.event_type: 'view' is not one of click, cart"),
        ({"event_type": "Click"}, r"events\[1\]\.event_type"),
        ({"timestamp_ms": -1}, r"events\[1\]\.timestamp_ms: -1 is negative"),
        ({"timestamp_ms": 2**62}, r"events\[1\]\.timestamp_ms: .* in the future"),
        ({"request_id": "r" * 257}, r"events\[1\]\.request_id is longer than 256 bytes"),
    ],
)
def test_bad_event_is_named_by_index_and_field(bad: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_feedback(request(GOOD, {**GOOD, **bad}, GOOD))


def test_event_count_limits() -> None:
    with pytest.raises(InvalidArgument, match="events is empty"):
        parse_feedback(request())
    with pytest.raises(InvalidArgument, match="1001 entries, more than 1000"):
        parse_feedback(request(*[GOOD] * 1001))
    assert len(parse_feedback(request(*[GOOD] * 3), max_events=3)) == 3


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_import_csv_and_parquet(event_url: str, tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path / "fb.csv",
        [
            {
                "user_id": "007",
                "item_id": "'; DROP TABLE feedback; --",
                "event_type": "click",
                "timestamp": "2026-01-01T10:00:00",
                "request_id": "r1",
            },
            {
                "user_id": "u2",
                "item_id": "NA",
                "event_type": "purchase",
                "timestamp": "2026-01-01T11:00:00+02:00",
                "request_id": "",
            },
        ],
    )
    parquet = tmp_path / "fb.parquet"
    pd.DataFrame(
        {
            "user_id": ["u3"],
            "item_id": ["i3"],
            "event_type": ["cart"],
            "timestamp_ms": [1_767_261_600_000],
        }
    ).to_parquet(parquet)
    assert events_cli.main(["import", "--url", event_url, str(csv), str(parquet)]) == 0
    assert count_rows(event_url, "feedback") == 3


def test_import_rejects_a_bad_row_and_stores_nothing(event_url: str, tmp_path: Path) -> None:
    good = write_csv(
        tmp_path / "good.csv",
        [{"user_id": "u", "item_id": "i", "event_type": "click", "timestamp": "2026-01-01"}],
    )
    bad = write_csv(
        tmp_path / "bad.csv",
        [
            {"user_id": "u", "item_id": "i", "event_type": "click", "timestamp": "2026-01-01"},
            {"user_id": "u", "item_id": "i", "event_type": "like", "timestamp": "2026-01-01"},
        ],
    )
    assert events_cli.main(["create", "--url", event_url]) == 0
    assert events_cli.main(["import", "--url", event_url, str(good), str(bad)]) == 2
    assert count_rows(event_url, "feedback") == 0
    with pytest.raises(InvalidArgument, match=r"bad\.csv row 2\.event_type: 'like'"):
        events_cli.feedback_rows(events_cli.read_feedback_file(bad), bad, datetime.now(UTC))


def test_import_names_unparseable_times_and_missing_columns(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "t.csv",
        [{"user_id": "u", "item_id": "i", "event_type": "click", "timestamp": "yesterday"}],
    )
    with pytest.raises(InvalidArgument, match=r"t\.csv row 1\.timestamp: 'yesterday'"):
        events_cli.feedback_rows(events_cli.read_feedback_file(path), path, datetime.now(UTC))
    missing = write_csv(tmp_path / "m.csv", [{"user_id": "u", "item_id": "i"}])
    with pytest.raises(ConfigError, match="missing column.*event_type.*timestamp"):
        events_cli.read_feedback_file(missing)
