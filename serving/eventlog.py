"""The exposure log: impressions and feedback stored through SQLAlchemy 2 Core.

Every ranked list the server returns is logged as impressions (one row per item shown);
clicks, carts and purchases come back as feedback. Impressions go through a bounded
in-memory queue and a daemon writer thread that batches inserts, so the Rank hot path
never waits on the database; when the queue is full rows are dropped and counted
(Prometheus ``tailrank_eventlog_rows_dropped_total``), never silently. Feedback is
written synchronously, all events of a call in one transaction.

SQLite by default (``sqlite:///data/events.db``), PostgreSQL by URL
(``postgresql+psycopg://user@host:5432/db``). ``EventLog(url)`` creates the tables and
indexes when missing; see docs/EVENTS.md for the schema and the queries.

    log = EventLog("sqlite:///data/events.db")
    log.log_impressions([Impression(...), ...])   # never blocks
    log.record_feedback(parse_feedback(request))  # validated, one transaction
    log.close()                                   # flushes the queue
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

import sqlalchemy as sa
from prometheus_client import Counter, Gauge

from serving.api.tailrank.v1 import ranking_pb2
from serving.errors import ConfigError, InvalidArgument, Unavailable
from serving.eventschema import (
    EVENT_TYPES,
    check_event_fields,
    create_tables,
    feedback,
    impressions,
    make_engine,
)

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///data/events.db"
MAX_FEEDBACK_EVENTS = 1000  # per Feedback call (ranking.proto)
POLL_S = 0.05  # the writer's longest wait before it checks for close()

ROWS_WRITTEN = Counter(
    "tailrank_eventlog_rows_written", "Event rows stored in the event log.", ["table"]
)
ROWS_DROPPED = Counter(
    "tailrank_eventlog_rows_dropped",
    "Impression rows not stored: queue full, unwritable row, or lost at shutdown.",
)
WRITE_ERRORS = Counter(
    "tailrank_eventlog_write_errors", "Failed event-log writes (each retry counts once)."
)
QUEUE_DEPTH = Gauge("tailrank_eventlog_queue_depth", "Impression rows waiting to be written.")


class Impression(NamedTuple):
    """One item shown in one Rank response. ``position`` is 1 for the first item.
    A tuple: the hot path builds top_k of them per call, the writer binds them as is."""

    request_id: str
    user_id: str
    item_id: str
    position: int
    score: float
    click_probability: float
    is_tail: bool
    model_version: str
    shown_at: datetime  # timezone-aware; a naive value is taken as UTC


@dataclass(frozen=True)
class FeedbackRow:
    """One thing a user did with an item: ``event_type`` is click, cart or purchase."""

    user_id: str
    item_id: str
    event_type: str
    occurred_at: datetime
    request_id: str | None


def parse_feedback(
    request: ranking_pb2.FeedbackRequest, max_events: int = MAX_FEEDBACK_EVENTS
) -> list[FeedbackRow]:
    """Validate every event of a ``ranking_pb2.FeedbackRequest``; return rows to store.

    Nothing is returned unless all events are valid, so a bad event stores nothing.
    Raises ``InvalidArgument`` naming the event index and the field to fix.
    """
    events = request.events
    if not events:
        raise InvalidArgument("events is empty: send at least one FeedbackEvent")
    if len(events) > max_events:
        raise InvalidArgument(
            f"events has {len(events)} entries, more than {max_events}: split the call"
        )
    now = datetime.now(UTC)
    return [
        feedback_row(
            f"events[{i}]", e.user_id, e.item_id, e.event_type, e.timestamp_ms, e.request_id, now
        )
        for i, e in enumerate(events)
    ]


def feedback_row(
    where: str,
    user_id: str,
    item_id: str,
    event_type: str,
    timestamp_ms: int,
    request_id: str | None,
    now: datetime,
) -> FeedbackRow:
    """Check one event (``check_event_fields``) and build its row; 0 ms means ``now``."""
    now_ms = int(now.timestamp() * 1000)
    check_event_fields(where, user_id, item_id, event_type, timestamp_ms, request_id, now_ms)
    occurred = now if timestamp_ms == 0 else datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return FeedbackRow(user_id, item_id, event_type, occurred, request_id or None)


_COLUMNS = Impression._fields  # the impression table's data columns, in insert order


def feedback_params(rows: Iterable[FeedbackRow], recorded_at: datetime) -> list[dict[str, object]]:
    """Bound-parameter dicts for inserting ``rows`` into the feedback table."""
    out = []
    for row in rows:
        if row.event_type not in EVENT_TYPES:
            raise InvalidArgument(f"event_type {row.event_type!r} is not one of {EVENT_TYPES}")
        out.append(
            {
                "user_id": row.user_id,
                "item_id": row.item_id,
                "event_type": row.event_type,
                "occurred_at": row.occurred_at,
                "request_id": row.request_id,
                "recorded_at": recorded_at,
            }
        )
    return out


def is_transient(exc: BaseException) -> bool:
    """True when a database error means "down or busy, retry later" (not a bad row)."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError)


class EventLog:
    """Impressions through a bounded queue and a batching writer thread; feedback inline.

    ``queue_size`` bounds the impression rows held in memory (the writer holds at most
    one more batch of ``batch_size`` while it retries a down database).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        queue_size: int = 10000,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        connect_timeout_s: float = 5.0,
        retry_max_s: float = 2.0,
    ) -> None:
        if queue_size < 1 or batch_size < 1 or flush_interval_s <= 0:
            raise ConfigError("event log: queue_size, batch_size and flush_interval_s must be > 0")
        self.engine = make_engine(url, connect_timeout_s)
        try:
            create_tables(self.engine)
        except sa.exc.SQLAlchemyError as exc:
            self.engine.dispose()
            raise Unavailable(f"event store {self.engine.url!r} unreachable: {exc}") from exc
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retry_max_s = retry_max_s
        self.written = 0  # impression rows stored by this instance
        self.dropped = 0  # impression rows lost by this instance (also in ROWS_DROPPED)
        # One queue entry per response (not per row: a fifth of the hot path's logging
        # cost); the bound is on rows, counted in _pending under _admit.
        self.queue_size = queue_size
        self._pending = 0  # rows queued and not yet taken by the writer
        self._queue: queue.Queue[list[Impression]] = queue.Queue()
        self._admit = threading.Lock()  # makes a response's rows all-or-nothing
        self._count_lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = float("inf")  # set by close(): give up retrying after it
        dialect = self.engine.dialect
        compiled = sa.insert(impressions).compile(dialect=dialect, column_keys=_COLUMNS)
        self._compiled_insert = (
            str(compiled),
            compiled.positional,
            impressions.c.shown_at.type.dialect_impl(dialect).bind_processor(dialect),
        )
        self._writer = threading.Thread(target=self._run, name="eventlog-writer", daemon=True)
        self._writer.start()

    # --- impressions: the hot path ----------------------------------------------------
    def log_impressions(self, rows: Sequence[Impression]) -> bool:
        """Queue one response's impressions; never blocks.

        Returns False, and counts the rows as dropped, when the queue has no room for all
        of them (a response is logged whole or not at all) or the log is closed.
        """
        if not rows:
            return True
        with self._admit:
            if self._stop.is_set() or self.queue_size - self._pending < len(rows):
                self._count_dropped(len(rows))
                return False
            self._pending += len(rows)
            self._queue.put_nowait(list(rows))  # unbounded queue: never blocks
        QUEUE_DEPTH.set(self._pending)
        return True

    def _count_dropped(self, n: int) -> None:
        with self._count_lock:  # request threads and the writer both drop rows
            self.dropped += n
        ROWS_DROPPED.inc(n)

    # --- the writer thread -------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return  # stopping, and everything queued is written
            self._write_with_retry(batch)
            QUEUE_DEPTH.set(self._pending)

    def _next_batch(self) -> list[Impression]:
        """batch_size rows (or up to one response more), sent flush_interval_s after the
        first one arrived.

        Waits in short slices so that close() is noticed at once; when stopping, takes
        what is queued without waiting. Returns [] only when stopping and the queue is empty.
        """
        batch: list[Impression] = []
        until = float("inf")
        while len(batch) < self.batch_size:
            stopping = self._stop.is_set()
            timeout = min(POLL_S, until - time.monotonic())
            try:
                if stopping or timeout <= 0:
                    rows = self._queue.get_nowait()
                else:
                    rows = self._queue.get(timeout=timeout)
            except queue.Empty:
                if stopping or time.monotonic() >= until:
                    break
                continue
            with self._admit:
                self._pending -= len(rows)
            if not batch:
                until = time.monotonic() + self.flush_interval_s
            batch.extend(rows)
        return batch

    def _write_with_retry(self, batch: list[Impression]) -> None:
        delay = 0.05
        while True:
            if time.monotonic() > self._deadline:  # closing, and the store stayed down
                log.error("event store still down at shutdown: %d rows lost", len(batch))
                self._count_dropped(len(batch))
                return
            try:
                self._insert(batch)
                return
            except Exception as exc:  # noqa: BLE001 - the writer thread must never die
                WRITE_ERRORS.inc()
                if not is_transient(exc):
                    self._write_rows_alone(batch, exc)
                    return
                log.warning("event store write failed, retrying in %.2fs: %s", delay, exc)
                time.sleep(max(0.0, min(delay, self._deadline - time.monotonic())))
                delay = min(delay * 2, self.retry_max_s)

    def _write_rows_alone(self, batch: list[Impression], exc: Exception) -> None:
        """A batch failed for a reason other than an outage: keep every row that fits."""
        log.error("event store rejected a batch of %d rows: %s", len(batch), exc)
        for row in batch:
            try:
                self._insert([row])
            except Exception as row_exc:  # noqa: BLE001
                WRITE_ERRORS.inc()
                log.error("impression dropped (request_id=%r): %s", row.request_id, row_exc)
                self._count_dropped(1)

    def _insert(self, batch: list[Impression]) -> None:
        """One executemany of the INSERT that SQLAlchemy compiled once (bound parameters).

        The per-row work is kept to building a tuple (or dict): the one column that needs
        conversion (shown_at, through its type's bind processor) is converted once per
        distinct value, i.e. once per response. This halves the writer's CPU per row.
        """
        sql, positional, shown_at = self._compiled_insert
        times: dict[datetime, object] = {}
        params = []
        for row in batch:
            t = row.shown_at
            if t not in times:  # UTCDateTime stores it in UTC (naive = UTC)
                times[t] = shown_at(t) if shown_at else t
            # plain Python types: numpy scalars from a caller would not adapt on psycopg
            values = (
                row.request_id, row.user_id, row.item_id, int(row.position), float(row.score),
                float(row.click_probability), bool(row.is_tail), row.model_version, times[t],
            )  # fmt: skip
            params.append(values if positional else dict(zip(_COLUMNS, values, strict=True)))
        with self.engine.begin() as conn:
            conn.exec_driver_sql(sql, params)  # executemany, bound parameters
        self.written += len(batch)
        ROWS_WRITTEN.labels(table="impressions").inc(len(batch))

    # --- feedback ----------------------------------------------------------------------
    def record_feedback(self, events: Sequence[FeedbackRow]) -> int:
        """Insert feedback rows in one transaction; return how many were stored.

        Raises ``Unavailable`` when the database is down or busy (nothing is stored).
        """
        if not events:
            return 0
        params = feedback_params(events, datetime.now(UTC))
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(feedback), params)
        except sa.exc.SQLAlchemyError as exc:
            WRITE_ERRORS.inc()
            if is_transient(exc):
                log.warning("feedback not stored, event store down or busy: %s", exc)
                raise Unavailable("event store down or busy: nothing stored, retry later") from exc
            raise
        ROWS_WRITTEN.labels(table="feedback").inc(len(params))
        return len(params)

    # --- shutdown ----------------------------------------------------------------------
    def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking rows, write everything queued, stop the writer; idempotent.

        If the database stays down past ``timeout_s`` the rows still queued are counted
        as dropped and logged as lost.
        """
        with self._admit:
            self._deadline = time.monotonic() + timeout_s
            self._stop.set()
        self._writer.join(timeout_s + 1.0)
        if self._writer.is_alive():
            log.error("event-log writer did not stop within %.1fs", timeout_s)
        left = self._pending
        if left and not self._writer.is_alive():
            log.error("%d queued impressions lost at shutdown", left)
            self._count_dropped(left)
        QUEUE_DEPTH.set(self._pending)
        self.engine.dispose()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
