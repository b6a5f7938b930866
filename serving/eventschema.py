"""The event store's schema (SQLAlchemy 2 Core), engine set-up and event validation.

Three tables, created by ``create_tables`` (``EventLog`` calls it on start, and
``python -m serving.events_cli create --url URL`` runs it on its own):

- ``impressions``: one row per item shown in a Rank response;
- ``feedback``: one row per click / cart / purchase a client reported;
- ``item_upserts``: one row per item an UpsertItems call wrote (its fields as JSON).

Times are stored in UTC (``timestamp with time zone`` on PostgreSQL, UTC text on SQLite)
and always read back timezone-aware. Indexes serve the report's window and join queries.
See docs/EVENTS.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

from core.ids import MAX_ID_BYTES, id_problem
from serving.errors import ConfigError, InvalidArgument

EVENT_TYPES = ("click", "cart", "purchase")
FUTURE_TOLERANCE_MS = 24 * 3600 * 1000  # feedback time may run ahead of ours by clock skew
ECHO_CHARS = 40  # of a bad event_type, at most, in its error message


class UTCDateTime(TypeDecorator):
    """A datetime stored in UTC and read back timezone-aware (naive input = UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        # SQLite keeps no zone: store the UTC wall time so text order is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER
_ID = sa.String(MAX_ID_BYTES)

metadata = sa.MetaData()

impressions = sa.Table(
    "impressions",
    metadata,
    sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("request_id", _ID, nullable=False),
    sa.Column("user_id", _ID, nullable=False),
    sa.Column("item_id", _ID, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),  # 1 = first item of the response
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("click_probability", sa.Float, nullable=False),
    sa.Column("is_tail", sa.Boolean, nullable=False),
    sa.Column("model_version", sa.String(MAX_ID_BYTES), nullable=False),
    sa.Column("shown_at", UTCDateTime, nullable=False),
    # The hot, append-only table keeps one index: the report and the export read a time
    # window and join feedback in memory. Each extra index is paid on every Rank call.
    sa.Index("ix_impressions_shown_at", "shown_at"),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("user_id", _ID, nullable=False),
    sa.Column("item_id", _ID, nullable=False),
    sa.Column("event_type", sa.String(16), nullable=False),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("request_id", _ID, nullable=True),  # the Rank response that showed the item
    sa.Column("recorded_at", UTCDateTime, nullable=False),  # when the server stored it
    sa.CheckConstraint(
        "event_type IN ('click', 'cart', 'purchase')", name="ck_feedback_event_type"
    ),
    sa.Index("ix_feedback_occurred_at", "occurred_at"),
    sa.Index("ix_feedback_request_item", "request_id", "item_id"),
    sa.Index("ix_feedback_user_item_occurred_at", "user_id", "item_id", "occurred_at"),
)

# One row per item of every UpsertItems call: the fields as sent (JSON {"text": {...},
# "numeric": {...}}), so `events_cli export` hands the next offline rebuild the same
# catalogue rows the live path embedded (docs/EVENTS.md, "Upserted items").
item_upserts = sa.Table(
    "item_upserts",
    metadata,
    sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("item_id", _ID, nullable=False),
    sa.Column("fields", sa.Text, nullable=False),
    sa.Column("upserted_at", UTCDateTime, nullable=False),
    sa.Index("ix_item_upserts_upserted_at", "upserted_at"),
)


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    """WAL lets the report read while the server writes; NORMAL sync is safe under WAL."""
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, connect_timeout_s: float = 5.0, must_exist: bool = False) -> sa.Engine:
    """An engine for ``url``; makes a SQLite file's parent folder. Bad URL: ConfigError.

    ``must_exist`` (readers: report, export) refuses a SQLite file that is not there
    instead of creating an empty one.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(
            f"event log URL {url!r} is not a SQLAlchemy URL; use e.g. sqlite:///data/events.db"
            " or postgresql+psycopg://user@host:5432/db"
        ) from exc
    kwargs: dict[str, object] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError(
                "event log: in-memory SQLite is not shared across threads; use a file"
            )
        if must_exist and not Path(parsed.database).is_file():
            raise ConfigError(f"no event store at {parsed.database}: check --url")
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": connect_timeout_s, "check_same_thread": False}
    elif parsed.get_backend_name() == "postgresql":
        # libpq waits at least 2 s whatever is asked
        kwargs["connect_args"] = {"connect_timeout": max(2, round(connect_timeout_s))}
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (sa.exc.NoSuchModuleError, ImportError) as exc:
        raise ConfigError(f"event log URL {url!r}: no such database driver ({exc})") from exc
    if parsed.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def create_tables(engine: sa.Engine) -> None:
    """Create the tables and indexes that are missing (never alters or drops)."""
    metadata.create_all(engine, checkfirst=True)


def _check_id(where: str, field: str, value: str | None, required: bool = True) -> None:
    problem = id_problem(f"{where}.{field}", value, required=required)
    if problem:
        raise InvalidArgument(problem)


def check_event_fields(
    where: str,
    user_id: str,
    item_id: str,
    event_type: str,
    timestamp_ms: int,
    request_id: str | None,
    now_ms: int,
) -> None:
    """Raise ``InvalidArgument`` naming ``<where>.<field>`` (e.g. ``events[3].item_id``).

    Ids non-empty (request_id may be empty), at most 256 UTF-8 bytes, no NUL; event_type
    one of click/cart/purchase; ``timestamp_ms`` >= 0 (0 = now), at most a day past now.
    """
    _check_id(where, "user_id", user_id)
    _check_id(where, "item_id", item_id)
    if event_type not in EVENT_TYPES:
        # echo at most ECHO_CHARS: the message travels in a gRPC trailer, which clients
        # refuse past 16 KiB (RESOURCE_EXHAUSTED instead of this INVALID_ARGUMENT)
        shown = repr(event_type[:ECHO_CHARS]) + ("..." if len(event_type) > ECHO_CHARS else "")
        raise InvalidArgument(f"{where}.event_type: {shown} is not one of {', '.join(EVENT_TYPES)}")
    if timestamp_ms < 0:
        raise InvalidArgument(
            f"{where}.timestamp_ms: {timestamp_ms} is negative; give milliseconds"
            " since the Unix epoch, or 0 for now"
        )
    if timestamp_ms > now_ms + FUTURE_TOLERANCE_MS:
        raise InvalidArgument(
            f"{where}.timestamp_ms: {timestamp_ms} is more than a day in the future;"
            " give milliseconds (not micro- or nanoseconds) since the Unix epoch"
        )
    _check_id(where, "request_id", request_id, required=False)
