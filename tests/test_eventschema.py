"""The event store's schema and engine (serving/eventschema.py) on real SQLite and PostgreSQL.

NOT NULL and CHECK constraints refuse bad rows in the database itself; SQLite runs in
WAL mode with synchronous=NORMAL; ``make_engine`` refuses URLs it cannot serve and passes
its timeouts to the driver; times are stored and exported as the right UTC instants
whatever the machine's time zone (the suite normally runs in UTC, which would hide a
local-time bug, so the zone is switched here with ``time.tzset``).

    pytest tests/test_eventschema.py           # PostgreSQL cases skip if it is down
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from serving import events_cli
from serving.api.tailrank.v1 import ranking_pb2
from serving.errors import ConfigError
from serving.eventlog import EventLog, Impression, parse_feedback
from serving.eventschema import UTCDateTime, create_tables, feedback, impressions, make_engine

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)  # New York is UTC-5 that day, Kolkata UTC+5:30
IMPRESSION = {
    "request_id": "r", "user_id": "u", "item_id": "i", "position": 1, "score": 0.5,
    "click_probability": 0.25, "is_tail": True, "model_version": "v1", "shown_at": T0,
}  # fmt: skip
FEEDBACK = {
    "user_id": "u", "item_id": "i", "event_type": "click", "occurred_at": T0,
    "request_id": None, "recorded_at": T0,
}  # fmt: skip


FEEDBACK_EVENT = {"user_id": "u", "item_id": "i", "event_type": "click", "timestamp_ms": 0}


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


# --- constraints --------------------------------------------------------------------------
def test_only_the_feedback_request_id_may_be_null(event_url: str) -> None:
    engine = make_engine(event_url)
    try:
        create_tables(engine)
        inspector = sa.inspect(engine)
        nullable = {
            f"{table}.{col['name']}"
            for table in ("impressions", "feedback")
            for col in inspector.get_columns(table)
            if col["nullable"]
        }
    finally:
        engine.dispose()
    assert nullable == {"feedback.request_id"}  # as created in the database, not as declared


@pytest.mark.parametrize(
    ("table", "row", "column"),
    [(impressions, IMPRESSION, c) for c in IMPRESSION]
    + [(feedback, FEEDBACK, c) for c in FEEDBACK if c != "request_id"],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_null_in_a_not_null_column_is_refused_by_the_database(
    event_url: str, table: sa.Table, row: dict, column: str
) -> None:
    engine = make_engine(event_url)
    try:
        create_tables(engine)
        with engine.begin() as conn:
            conn.execute(sa.insert(table), [row])  # the complete row goes in
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.insert(table), [{**row, column: None}])
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 1
    finally:
        engine.dispose()


def test_event_type_outside_the_three_is_refused_by_the_database(event_url: str) -> None:
    engine = make_engine(event_url)
    try:
        create_tables(engine)
        create_tables(engine)  # a second call finds the tables and changes nothing
        with engine.begin() as conn:
            conn.execute(sa.insert(feedback), [{**FEEDBACK, "event_type": t} for t in
                                               ("click", "cart", "purchase")])  # fmt: skip
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(sa.insert(feedback), [{**FEEDBACK, "event_type": "like"}])
    finally:
        engine.dispose()


def test_ids_at_their_limits_are_stored_verbatim(event_url: str) -> None:
    """256-byte ids (ASCII: 256 characters, the VARCHAR(256) limit on PostgreSQL; 4-byte
    characters: 64) and a 128-byte request id go through validation into the store."""
    ascii_id, emoji_id, request_id = "a" * 256, "\U0001f6d2" * 64, "ü" * 64
    assert len(emoji_id.encode()) == 256 and len(request_id.encode()) == 128
    events = ranking_pb2.FeedbackRequest(
        events=[{"user_id": ascii_id, "item_id": emoji_id, "event_type": "purchase",
                 "request_id": "é" * 128, "timestamp_ms": ms(T0)}]
    )  # fmt: skip
    shown = Impression(request_id, ascii_id, emoji_id, 1, 0.5, 0.5, True, "v" * 256, T0)
    with EventLog(event_url) as log:
        assert log.log_impressions([shown])
        assert log.record_feedback(parse_feedback(events)) == 1
    engine = make_engine(event_url)
    try:
        with engine.connect() as conn:
            imp = conn.execute(sa.select(*[c for c in impressions.c if c.name != "id"])).one()
            fb = conn.execute(sa.select(feedback.c.user_id, feedback.c.item_id,
                                        feedback.c.request_id)).one()  # fmt: skip
    finally:
        engine.dispose()
    assert tuple(imp) == tuple(shown)
    assert tuple(fb) == (ascii_id, emoji_id, "é" * 128)


# --- SQLite settings and make_engine --------------------------------------------------------
def test_sqlite_runs_in_wal_mode_with_normal_sync_on_every_connection(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'events.db'}")
    try:
        with engine.connect() as one, engine.connect() as two:  # two pooled connections
            for conn in (one, two):
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    finally:
        engine.dispose()
    raw = sqlite3.connect(tmp_path / "events.db")  # WAL is a property of the file
    assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    raw.close()


def connect_params(engine: sa.Engine) -> dict:
    """The keyword arguments the engine hands the DBAPI driver's connect()."""
    seen: dict = {}
    sa.event.listen(engine, "do_connect", lambda _d, _r, _a, cparams: seen.update(cparams))
    try:
        engine.connect().close()
    except sa.exc.OperationalError:  # PostgreSQL on port 1: refused, after do_connect ran
        pass
    finally:
        engine.dispose()
    return seen


def test_sqlite_timeout_and_thread_sharing_reach_the_driver(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    assert connect_params(make_engine(url, connect_timeout_s=0.7)) == {
        "timeout": 0.7, "check_same_thread": False
    }  # fmt: skip
    assert connect_params(make_engine(url))["timeout"] == 5.0


@pytest.mark.parametrize(("asked", "given"), [(0.4, 2), (2.0, 2), (7.6, 8), (None, 5)])
def test_postgres_connect_timeout_is_whole_seconds_and_at_least_two(
    asked: float | None, given: int
) -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # nothing listens on port 1
    engine = make_engine(url) if asked is None else make_engine(url, connect_timeout_s=asked)
    assert connect_params(engine)["connect_timeout"] == given


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///"])
def test_in_memory_sqlite_is_refused(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_engine(url)
    assert str(err.value) == (
        "event log: in-memory SQLite is not shared across threads; use a file"
    )


def test_bad_urls_say_what_to_write(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        make_engine("events.db")
    assert str(err.value) == (
        "event log URL 'events.db' is not a SQLAlchemy URL; use e.g. sqlite:///data/events.db"
        " or postgresql+psycopg://user@host:5432/db"
    )
    with pytest.raises(ConfigError) as err:
        make_engine("nosuchdb://x/y")
    assert str(err.value).startswith("event log URL 'nosuchdb://x/y': no such database driver (")


def test_must_exist_refuses_a_missing_file_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "events.db"
    with pytest.raises(ConfigError) as err:
        make_engine(f"sqlite:///{missing}", must_exist=True)
    assert str(err.value) == f"no event store at {missing}: check --url"
    assert not missing.parent.exists()
    make_engine(f"sqlite:///{missing}").dispose()  # a writer makes the folders
    assert missing.parent.is_dir() and not missing.exists()  # the file comes on connect
    sqlite3.connect(missing).close()
    make_engine(f"sqlite:///{missing}", must_exist=True).dispose()
    make_engine(f"sqlite:///{missing}").dispose()  # folders that exist are fine


def test_a_writer_creates_nested_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c" / "events.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        create_tables(engine)
    finally:
        engine.dispose()
    assert path.is_file()


@pytest.mark.postgres
def test_a_connection_dropped_while_idle_is_replaced_before_use(postgres_database: dict) -> None:
    """PostgreSQL restarted (or a proxy cut idle sessions) between two Feedback calls: the
    pool's idle connection is dead, and the next call must still store its event rather
    than fail once (pool_pre_ping)."""
    event_url = str(postgres_database["url"])
    name = sa.make_url(event_url).database
    admin = sa.create_engine(sa.make_url(event_url).set(database="postgres"))
    row = parse_feedback(ranking_pb2.FeedbackRequest(events=[FEEDBACK_EVENT]))
    with EventLog(event_url) as log:
        assert log.record_feedback(row) == 1  # the pool now holds an idle session
        with admin.connect() as conn:
            killed = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            ).scalar()
        admin.dispose()
        assert killed >= 1
        assert log.record_feedback(row) == 1


# --- UTCDateTime ----------------------------------------------------------------------------
SQLITE, POSTGRES = sqlite.dialect(), postgresql.psycopg.dialect()
NEW_YORK_7AM = datetime(2026, 3, 1, 7, tzinfo=ZoneInfo("America/New_York"))  # = T0


def test_bind_stores_utc_naive_on_sqlite_and_utc_aware_on_postgres() -> None:
    utc = UTCDateTime()
    for given in (NEW_YORK_7AM, T0, datetime(2026, 3, 1, 12)):  # aware, UTC, naive (= UTC)
        on_sqlite = utc.process_bind_param(given, SQLITE)
        assert on_sqlite == datetime(2026, 3, 1, 12) and on_sqlite.tzinfo is None
        on_postgres = utc.process_bind_param(given, POSTGRES)
        assert on_postgres == T0 and on_postgres.tzinfo is UTC
    assert utc.process_bind_param(None, SQLITE) is None
    assert utc.process_bind_param(None, POSTGRES) is None


def test_results_come_back_aware_in_utc() -> None:
    utc = UTCDateTime()
    assert utc.process_result_value(datetime(2026, 3, 1, 12), SQLITE) == T0
    assert utc.process_result_value(datetime(2026, 3, 1, 12), SQLITE).tzinfo is UTC
    kolkata = datetime(2026, 3, 1, 17, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    back = utc.process_result_value(kolkata, POSTGRES)
    assert back == T0 and back.tzinfo is UTC
    assert utc.process_result_value(None, SQLITE) is None


# --- time zones: what is stored and exported does not depend on the machine's zone ----------
@pytest.fixture(params=["America/New_York", "Asia/Kolkata"])
def local_zone(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test with the process (and libpq's session) in another time zone."""
    saved = {name: os.environ.get(name) for name in ("TZ", "PGTZ")}
    os.environ["TZ"] = os.environ["PGTZ"] = request.param
    time.tzset()
    try:
        yield request.param
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        time.tzset()


def stored_epochs(url: str, column: sa.Column) -> list[float]:
    """The column's values as the database holds them, as Unix seconds, in id order."""
    table = column.table
    if url.startswith("sqlite"):  # UTC wall time as text: read it with no zone handling
        raw = sqlite3.connect(sa.make_url(url).database)
        try:
            rows = raw.execute(f"SELECT {column.name} FROM {table.name} ORDER BY id").fetchall()
        finally:
            raw.close()
        return [datetime.fromisoformat(v).replace(tzinfo=UTC).timestamp() for (v,) in rows]
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.select(sa.extract("epoch", column)).order_by(table.c.id)
            return [float(v) for v in conn.execute(query).scalars()]
    finally:
        engine.dispose()


def test_times_are_stored_and_exported_as_utc_in_any_local_zone(
    local_zone: str, event_url: str, tmp_path: Path
) -> None:
    assert datetime.now().astimezone().utcoffset() != timedelta(0)  # the zone did switch
    local = T0.astimezone()  # T0 in the machine's zone, e.g. 07:00-05:00
    assert local.hour != 12
    request = ranking_pb2.FeedbackRequest(
        events=[
            {"user_id": "u1", "item_id": "a", "event_type": "click", "request_id": "r1",
             "timestamp_ms": ms(T0 + timedelta(minutes=10))},
            {"user_id": "u1", "item_id": "a", "event_type": "cart", "timestamp_ms": 0},
        ]
    )  # fmt: skip
    with EventLog(event_url) as log:
        assert log.log_impressions(
            [Impression("r1", "u1", "a", 1, 0.9, 0.5, False, "v1", local),
             Impression("r2", "u1", "b", 1, 0.8, 0.4, True, "v1", datetime(2026, 3, 1, 12, 5))]
        )  # fmt: skip
        before = time.time()
        assert log.record_feedback(parse_feedback(request)) == 2
        after = time.time()
    csv = tmp_path / "feedback.csv"
    csv.write_text(
        "user_id,item_id,event_type,timestamp\n"
        "u1,b,purchase,2026-03-01T12:20:00\n"  # no zone: UTC
        "u2,a,click,2026-03-01T14:30:00+02:00\n"  # 12:30 UTC
    )
    assert events_cli.main(["import", "--url", event_url, str(csv)]) == 0

    t0 = T0.timestamp()
    assert stored_epochs(event_url, impressions.c.shown_at) == [t0, t0 + 300]
    occurred = stored_epochs(event_url, feedback.c.occurred_at)
    assert occurred[0] == t0 + 600 and occurred[2:] == [t0 + 1200, t0 + 1800]
    assert before - 1 <= occurred[1] <= after + 1  # 0 ms = the server's now, as UTC
    recorded = stored_epochs(event_url, feedback.c.recorded_at)
    assert all(before - 1 <= r <= time.time() + 1 for r in recorded)

    engine = make_engine(event_url)
    try:
        with engine.connect() as conn:
            shown = conn.execute(sa.select(impressions.c.shown_at).order_by("id")).scalars().all()
    finally:
        engine.dispose()
    assert shown == [T0, T0 + timedelta(minutes=5)]
    assert all(s.utcoffset() == timedelta(0) for s in shown)

    out = tmp_path / "export"
    window = ["--since", "2026-03-01T11:00", "--until", "2026-03-01T13:00"]  # no zone: UTC
    assert events_cli.main(["export", "--url", event_url, "--out", str(out), *window]) == 0
    inter = pd.read_parquet(out / "interactions.parquet")
    expected = [T0 + timedelta(minutes=m) for m in (10, 20, 30)]
    assert inter["timestamp"].tolist() == [pd.Timestamp(t) for t in expected]
    assert str(inter["timestamp"].dtype) == "datetime64[ns, UTC]"
    shown_df = pd.read_parquet(out / "impressions.parquet").sort_values("shown_at")
    assert shown_df["shown_at"].tolist() == [
        pd.Timestamp(t) for t in (T0, T0 + timedelta(minutes=5))
    ]
    assert shown_df["label"].tolist() == [1, 1]  # r1/a by request id, r2/b by user and time
