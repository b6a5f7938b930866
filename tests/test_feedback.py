"""Feedback validation (the Feedback RPC's rules) and the bulk import command.

pytest tests/test_feedback.py
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pandas as pd
import pytest

from serving import events_cli
from serving.api.tailrank.v1 import ranking_pb2
from serving.errors import ConfigError, InvalidArgument, status_for
from serving.eventlog import (
    MAX_FEEDBACK_EVENTS,
    FeedbackRow,
    feedback_params,
    feedback_row,
    parse_feedback,
)
from serving.eventschema import FUTURE_TOLERANCE_MS
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
        ({"item_id": "é" * 128 + "a"}, r"events\[1\]\.item_id is longer than 256 bytes \(257"),
    ],
)
def test_bad_event_is_named_by_index_and_field(bad: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_feedback(request(GOOD, {**GOOD, **bad}, GOOD))


def test_event_count_limits() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_feedback(request())
    assert str(err.value) == "events is empty: send at least one FeedbackEvent"
    assert MAX_FEEDBACK_EVENTS == 1000  # ranking.proto
    assert len(parse_feedback(request(*[GOOD] * 1000))) == 1000  # exactly the limit
    with pytest.raises(InvalidArgument) as err:
        parse_feedback(request(*[GOOD] * 1001))
    assert str(err.value) == "events has 1001 entries, more than 1000: split the call"
    assert len(parse_feedback(request(*[GOOD] * 3), max_events=3)) == 3
    with pytest.raises(InvalidArgument, match="events has 4 entries, more than 3"):
        parse_feedback(request(*[GOOD] * 4), max_events=3)


# --- the limits of one event, exactly at them and one past them ------------------------
NOW = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)
NOW_MS = 1_772_366_400_250  # NOW in epoch milliseconds
DAY_MS = 24 * 3600 * 1000


def row(**fields: object) -> FeedbackRow:
    """``feedback_row`` for GOOD with ``fields`` changed, at the fixed time NOW."""
    event = {**GOOD, "request_id": None, **fields}
    return feedback_row(
        "events[0]", event["user_id"], event["item_id"], event["event_type"],
        event["timestamp_ms"], event["request_id"], NOW,
    )  # fmt: skip


def refused(**fields: object) -> str:
    with pytest.raises(InvalidArgument) as err:
        row(**fields)
    assert status_for(err.value)[0] is grpc.StatusCode.INVALID_ARGUMENT
    return str(err.value)


def test_the_future_tolerance_is_one_day_to_the_millisecond() -> None:
    assert int(NOW.timestamp() * 1000) == NOW_MS
    assert FUTURE_TOLERANCE_MS == DAY_MS
    at_limit = row(timestamp_ms=NOW_MS + DAY_MS)
    assert at_limit.occurred_at == NOW + timedelta(days=1)
    assert refused(timestamp_ms=NOW_MS + DAY_MS + 1) == (
        f"events[0].timestamp_ms: {NOW_MS + DAY_MS + 1} is more than a day in the future;"
        " give milliseconds (not micro- or nanoseconds) since the Unix epoch"
    )
    assert row(timestamp_ms=NOW_MS - DAY_MS).occurred_at == NOW - timedelta(days=1)  # past: fine


def test_timestamp_zero_is_now_and_one_is_the_epoch_plus_a_millisecond() -> None:
    assert row(timestamp_ms=0).occurred_at == NOW
    assert row(timestamp_ms=1).occurred_at == datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)
    assert row(timestamp_ms=1_700_000_000_123).occurred_at == datetime(
        2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC
    )
    assert refused(timestamp_ms=-1) == (
        "events[0].timestamp_ms: -1 is negative; give milliseconds since the Unix epoch,"
        " or 0 for now"
    )


@pytest.mark.parametrize("field", ["user_id", "item_id", "request_id"])
def test_ids_of_exactly_256_bytes_are_stored_and_257_refused(field: str) -> None:
    at_limit = "é" * 127 + "ab"  # 256 bytes in 129 characters
    assert len(at_limit.encode()) == 256
    assert getattr(row(**{field: at_limit}), field) == at_limit
    assert refused(**{field: "é" * 128 + "a"}) == (
        f"events[0].{field} is longer than 256 bytes (257 bytes): send a shorter id"
    )


def test_request_id_is_optional_and_empty_means_none() -> None:
    assert row(request_id="").request_id is None
    assert row(request_id=None).request_id is None
    assert row(request_id="r-1").request_id == "r-1"
    assert refused(user_id="") == "events[0].user_id is empty: send a non-empty id"
    assert refused(item_id="") == "events[0].item_id is empty: send a non-empty id"
    assert refused(event_type="") == "events[0].event_type: '' is not one of click, cart, purchase"


def test_a_huge_event_type_is_echoed_short() -> None:
    """Regression (benchmarks.fuzz): a 1 MB event_type was echoed whole, and a gRPC client
    refuses a status message over 16 KiB, so the caller saw RESOURCE_EXHAUSTED."""
    message = refused(event_type="y" * 1_000_000)
    assert (
        message == "events[0].event_type: '" + "y" * 40 + "'... is not one of click, cart, purchase"
    )
    assert refused(event_type="y" * 40).startswith("events[0].event_type: '" + "y" * 40 + "' is")


def test_feedback_params_bind_every_column() -> None:
    rows = [row(request_id="req-1"), row(event_type="cart")]
    recorded = NOW + timedelta(seconds=1)
    occurred = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert feedback_params(rows, recorded) == [
        {"user_id": "u1", "item_id": "i1", "event_type": "click", "occurred_at": occurred,
         "request_id": "req-1", "recorded_at": recorded},
        {"user_id": "u1", "item_id": "i1", "event_type": "cart", "occurred_at": occurred,
         "request_id": None, "recorded_at": recorded},
    ]  # fmt: skip
    bad = FeedbackRow("u", "i", "like", NOW, None)
    with pytest.raises(InvalidArgument) as err:
        feedback_params([bad], recorded)
    assert str(err.value) == "event_type 'like' is not one of ('click', 'cart', 'purchase')"


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
