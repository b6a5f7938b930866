"""The event log on real SQLite and real PostgreSQL: writes, drops, shutdown, outages.

pytest tests/test_eventlog.py            # both backends (PostgreSQL skips if down)
pytest tests/test_eventlog.py -m "not postgres"
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from serving.api.tailrank.v1 import ranking_pb2
from serving.errors import ConfigError, Unavailable
from serving.eventlog import EventLog, FeedbackRow, Impression, parse_feedback
from serving.eventschema import feedback, impressions
from tests.fixtures.eventlog import FAST, count_rows, outage

HOSTILE_IDS = [
    "it's",
    'say "hi"',
    "'; DROP TABLE impressions; --",
    "Robert'); DROP TABLE feedback;--",
    "商品-日本語",
    "Ünïcødé 🛒",
    "back\\slash %_ wild\tcards",
]


def metric(name: str, **labels: str) -> float:
    """Current value of a Prometheus sample in the default registry (0 when unset)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def response(request_id: str, n: int, user: str = "u1", version: str = "v1") -> list[Impression]:
    """One Rank response's impressions: n items at positions 1..n."""
    now = datetime.now(UTC)
    return [
        Impression(
            request_id, user, f"item-{i}", i + 1, 1.0 / (i + 3), 0.1 * i, i % 2 == 1, version, now
        )
        for i in range(n)
    ]


def stored_impressions(url: str) -> list[tuple]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            cols = [c for c in impressions.c if c.name != "id"]
            return [tuple(r) for r in conn.execute(sa.select(*cols).order_by(impressions.c.id))]
    finally:
        engine.dispose()


def as_tuple(row: Impression) -> tuple:
    return (
        row.request_id,
        row.user_id,
        row.item_id,
        row.position,
        row.score,
        row.click_probability,
        row.is_tail,
        row.model_version,
        row.shown_at,
    )


def test_rows_written_equal_rows_logged(event_url: str) -> None:
    written_before = metric("tailrank_eventlog_rows_written_total", table="impressions")
    log = EventLog(event_url, batch_size=16, flush_interval_s=0.05)
    logged: list[Impression] = []
    lock = threading.Lock()

    def serve(worker: int) -> None:
        for r in range(10):
            rows = response(f"req-{worker}-{r}", 7, user=f"user-{worker}")
            assert log.log_impressions(rows)
            with lock:
                logged.extend(rows)

    threads = [threading.Thread(target=serve, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert sorted(map(as_tuple, logged)) == sorted(stored_impressions(event_url))
    assert log.written == len(logged) == 280 and log.dropped == 0
    after = metric("tailrank_eventlog_rows_written_total", table="impressions")
    assert after - written_before == 280


def test_burst_beyond_queue_drops_counts_and_never_blocks(event_url: str) -> None:
    log = EventLog(event_url, queue_size=50, batch_size=10, flush_interval_s=0.01, **FAST)
    dropped_before = metric("tailrank_eventlog_rows_dropped_total")
    with outage(event_url):
        start = time.perf_counter()
        accepted = [log.log_impressions(response(f"r{i}", 10)) for i in range(100)]
        burst_s = time.perf_counter() - start
        depth = metric("tailrank_eventlog_queue_depth")
    # While the store is down nothing drains: the queue (50) plus the writer's one batch.
    n_ok = 10 * sum(accepted)
    assert 50 <= n_ok <= 60 and accepted[0] and not accepted[-1]
    assert depth >= 40
    # a blocking writer would wait out the 0.2 s busy timeout on each of the 100 calls
    assert burst_s < 1.0, f"100 log_impressions calls took {burst_s:.3f}s"
    log.close()
    assert log.dropped == 1000 - n_ok
    assert metric("tailrank_eventlog_rows_dropped_total") - dropped_before == 1000 - n_ok
    assert count_rows(event_url, "impressions") == log.written == n_ok


def test_close_flushes_everything_queued(event_url: str) -> None:
    # a long flush interval and a huge batch: nothing is written until close() drains
    log = EventLog(event_url, queue_size=5000, batch_size=5000, flush_interval_s=30.0)
    for i in range(300):
        assert log.log_impressions(response(f"r{i}", 10))
    assert log.written == 0  # still held by the writer, waiting for its flush interval
    log.close(timeout_s=30.0)
    assert count_rows(event_url, "impressions") == 3000
    assert log.log_impressions(response("late", 3)) is False  # closed: counted, not stored
    assert log.dropped == 3


def test_one_batch_over_several_statements_is_stored_whole_in_order(event_url: str) -> None:
    """450 rows in one batch: on SQLite three multi-row INSERTs (200, 200, 50) in one
    transaction; on PostgreSQL one executemany. Every value comes back as logged."""
    log = EventLog(event_url, queue_size=1000, batch_size=1000, flush_interval_s=30.0)
    logged = [row for i in range(45) for row in response(f"r{i}", 10, user=f"u{i % 4}")]
    for i in range(45):
        assert log.log_impressions(logged[10 * i : 10 * (i + 1)])
    log.close()
    assert stored_impressions(event_url) == [as_tuple(r) for r in logged]
    assert log.written == 450 and log.writer_cpu_s > 0


def test_outage_keeps_rows_queued_then_writes_them(event_url: str) -> None:
    log = EventLog(event_url, batch_size=8, flush_interval_s=0.01, **FAST)
    errors_before = metric("tailrank_eventlog_write_errors_total")
    event = FeedbackRow("u1", "i1", "click", datetime.now(UTC), None)
    with outage(event_url):
        for i in range(5):
            assert log.log_impressions(response(f"r{i}", 6))
        time.sleep(0.6)  # the writer fails and retries with backoff meanwhile
        assert log.written == 0
        with pytest.raises(Unavailable, match="retry later"):
            log.record_feedback([event])
    assert metric("tailrank_eventlog_write_errors_total") > errors_before
    assert log.record_feedback([event]) == 1
    log.close()
    assert count_rows(event_url, "impressions") == 30 and log.dropped == 0
    assert count_rows(event_url, "feedback") == 1


def test_close_during_outage_counts_lost_rows(event_url: str) -> None:
    log = EventLog(event_url, batch_size=4, flush_interval_s=0.01, **FAST)
    with outage(event_url):
        for i in range(10):
            assert log.log_impressions(response(f"r{i}", 10))
        start = time.perf_counter()
        log.close(timeout_s=0.5)
        closing_s = time.perf_counter() - start
    assert log.dropped == 100 and log.written == 0
    # 25 batches would take 25 connect/busy timeouts (0.2 s each) if close() ignored its own
    assert closing_s < 3.0, f"close(timeout_s=0.5) took {closing_s:.2f}s"


def test_hostile_ids_are_stored_verbatim(event_url: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    shown = [
        Impression(f"req {s}", s, s, i + 1, 0.5, 0.25, False, f"v {s}", now)
        for i, s in enumerate(HOSTILE_IDS)
    ]
    request = ranking_pb2.FeedbackRequest(
        events=[
            {
                "user_id": s,
                "item_id": s,
                "event_type": "cart",
                "request_id": s,
                "timestamp_ms": int(now.timestamp() * 1000),
            }
            for s in HOSTILE_IDS
        ]
    )
    with EventLog(event_url) as log:
        assert log.log_impressions(shown)
        assert log.record_feedback(parse_feedback(request)) == len(HOSTILE_IDS)
    assert stored_impressions(event_url) == [as_tuple(r) for r in shown]
    engine = sa.create_engine(event_url)
    with engine.connect() as conn:
        cols = [
            feedback.c.user_id,
            feedback.c.item_id,
            feedback.c.request_id,
            feedback.c.occurred_at,
        ]
        got = [tuple(r) for r in conn.execute(sa.select(*cols).order_by(feedback.c.id))]
    engine.dispose()
    assert got == [(s, s, s, now) for s in HOSTILE_IDS]


def test_feedback_round_trip_and_reopen(event_url: str) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    rows = [
        FeedbackRow("u1", "i1", "click", when, "req-1"),
        FeedbackRow("u2", "i2", "purchase", when.astimezone(timezone(timedelta(hours=5))), None),
    ]
    with EventLog(event_url) as log:
        assert log.record_feedback(rows) == 2
    with EventLog(event_url) as log:  # tables exist: created once, reused
        assert log.record_feedback(rows[:1]) == 1
    engine = sa.create_engine(event_url)
    with engine.connect() as conn:
        got = conn.execute(
            sa.select(
                feedback.c.event_type, feedback.c.occurred_at, feedback.c.request_id
            ).order_by(feedback.c.id)
        ).all()
    engine.dispose()
    assert [tuple(r) for r in got] == [
        ("click", when, "req-1"),
        ("purchase", when, None),
        ("click", when, "req-1"),
    ]


def test_unreachable_store_and_bad_urls(tmp_path) -> None:
    with pytest.raises(Unavailable, match="unreachable"):
        EventLog("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_timeout_s=1)
    with pytest.raises(ConfigError, match="not a SQLAlchemy URL"):
        EventLog("events.db")
    with pytest.raises(ConfigError, match="in-memory"):
        EventLog("sqlite://")
    with pytest.raises(ConfigError, match="no such database driver"):
        EventLog("nosuchdb://x/y")
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'events.db'}"  # parents are created
    EventLog(url).close()
    assert (tmp_path / "a" / "b" / "events.db").is_file()
