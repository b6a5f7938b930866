"""Event store commands: create the tables, bulk-import feedback, export training data.

    python -m serving.events_cli create --url sqlite:///data/events.db
    python -m serving.events_cli import --url URL feedback.csv [more.parquet ...]
    python -m serving.events_cli export --url URL --out data/logged [--since ISO] [--until ISO]
    python -m training.data --data data/logged --out data/logged-canonical

``import`` reads CSV or Parquet files with columns ``user_id``, ``item_id``, ``event_type``
(click/cart/purchase), ``timestamp`` (ISO 8601; no zone = UTC) or ``timestamp_ms`` (epoch
milliseconds), and optional ``request_id``. Every row of every file is validated before
anything is stored, then all rows go in one transaction: a bad row stores nothing.

``export`` writes a folder that ``python -m training.data --data DIR`` accepts:
``interactions.parquet`` (the feedback events in the window: positives, with their event
type), ``items.parquet`` (the distinct item ids seen; no text, see docs/EVENTS.md) and,
unless ``--no-negatives``, ``impressions.parquet``: every impression in the window with a
``label`` column (1 = clicked/carted/bought per the report's attribution rule, 0 = shown
but not clicked: real negatives). The folder appears atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from tqdm import tqdm

from core import schema
from core.cli import run_cli, setup_logging
from serving.errors import ConfigError, InvalidArgument
from serving.eventlog import FeedbackRow, feedback_params, feedback_row
from serving.eventschema import create_tables, feedback, item_upserts, make_engine
from serving.report import (
    DEFAULT_ATTRIBUTION,
    Window,
    event_store_name,
    label_clicks,
    load_events,
    parse_time,
)

log = logging.getLogger(__name__)

CHUNK = 5000  # rows per INSERT executemany during import
IMPRESSIONS_FILE = "impressions.parquet"  # export: shown items with a 0/1 label
EXPORT_MARKER = "export.json"  # export: counts; marks a folder this command may replace
FEEDBACK_COLUMNS = ("user_id", "item_id", "event_type")


# --- import ---------------------------------------------------------------------------
def read_feedback_file(path: Path) -> pd.DataFrame:
    """Read one CSV/Parquet feedback file; ids stay strings, only empty cells are missing."""
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix in (".csv", ".tsv"):
        frame = pd.read_csv(
            path,
            sep="\t" if path.suffix == ".tsv" else ",",
            dtype=str,
            keep_default_na=False,
            na_values=[""],
        )
    else:
        raise ConfigError(f"{path}: give a .csv, .tsv or .parquet file")
    missing = [c for c in FEEDBACK_COLUMNS if c not in frame.columns]
    if "timestamp" not in frame.columns and "timestamp_ms" not in frame.columns:
        missing.append("timestamp or timestamp_ms")
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)} (docs/EVENTS.md)")
    return frame


def _times_ms(frame: pd.DataFrame, path: Path) -> np.ndarray:
    """Event times as epoch milliseconds; a row that does not parse is named."""
    if "timestamp_ms" in frame.columns:
        values = pd.to_numeric(frame["timestamp_ms"], errors="coerce")
        bad = values.isna() | (values != values.round())
    else:
        parsed = pd.to_datetime(frame["timestamp"], utc=True, errors="coerce", format="ISO8601")
        bad = parsed.isna()
        values = pd.Series(parsed.astype("datetime64[ns, UTC]").astype("int64") // 10**6)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        column = "timestamp_ms" if "timestamp_ms" in frame.columns else "timestamp"
        raise InvalidArgument(
            f"{path} row {row + 1}.{column}: {frame[column].iloc[row]!r} is not a time;"
            " use ISO 8601 (timestamp) or integer epoch milliseconds (timestamp_ms)"
        )
    return values.to_numpy().astype(np.int64)


def feedback_rows(frame: pd.DataFrame, path: Path, now: datetime) -> list[FeedbackRow]:
    """Validate every row (same rules as the Feedback RPC) and build FeedbackRows."""
    times = _times_ms(frame, path)
    requests = frame["request_id"] if "request_id" in frame.columns else [None] * len(frame)
    rows = []
    for i, (user, item, kind, ms, req) in enumerate(
        zip(frame["user_id"], frame["item_id"], frame["event_type"], times, requests, strict=True)
    ):
        req = None if req is None or pd.isna(req) else str(req)
        user, item = ("" if pd.isna(v) else str(v) for v in (user, item))
        kind = "" if pd.isna(kind) else str(kind)
        rows.append(feedback_row(f"{path} row {i + 1}", user, item, kind, int(ms), req, now))
    return rows


def import_files(engine: sa.Engine, paths: list[Path]) -> int:
    """Validate all files, then insert all rows in one transaction; return the count."""
    now = datetime.now(UTC)
    rows = [row for p in paths for row in feedback_rows(read_feedback_file(p), p, now)]
    params = feedback_params(rows, now)
    with engine.begin() as conn:
        for start in tqdm(range(0, len(params), CHUNK), desc="import", unit="chunk"):
            conn.execute(sa.insert(feedback), params[start : start + CHUNK])
    return len(params)


# --- export ---------------------------------------------------------------------------
def training_tables(
    imps: pd.DataFrame, fbs: pd.DataFrame, window: Window, attribution: timedelta
) -> dict[str, pd.DataFrame]:
    """interactions (feedback in the window), items (all ids seen), impressions + label."""
    in_window = pd.Series(True, index=fbs.index)
    if window.since is not None:
        in_window &= fbs["occurred_at"] >= window.since
    if window.until is not None:
        in_window &= fbs["occurred_at"] < window.until
    pos = fbs[in_window]
    interactions = pd.DataFrame(
        {
            schema.USER_ID: pos["user_id"].astype(str),
            schema.ITEM_ID: pos["item_id"].astype(str),
            schema.TIMESTAMP: pos["occurred_at"].astype("datetime64[ns, UTC]"),
            schema.EVENT: pos["event_type"].astype(str),
            schema.VALUE: np.full(len(pos), np.nan),
        }
    ).reset_index(drop=True)
    ids = pd.concat([imps["item_id"], pos["item_id"]]).astype(str).unique()
    items = pd.DataFrame({schema.ITEM_ID: np.sort(ids)})
    shown = imps.assign(label=label_clicks(imps, fbs, attribution)).drop(columns=["id"])
    shown["shown_at"] = shown["shown_at"].astype("datetime64[ns, UTC]")
    return {"interactions": interactions, "items": items, "impressions": shown}


def upserted_items(engine: sa.Engine, until: datetime | None = None) -> pd.DataFrame:
    """The latest UpsertItems fields of every item upserted before ``until`` (all of them
    when None, whatever the window's start: the catalogue is a state, not events), one row
    per item with its text and numeric columns."""
    query = sa.select(item_upserts).order_by(item_upserts.c.id)
    if until is not None:
        query = query.where(item_upserts.c.upserted_at < until)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    latest: dict[str, dict] = {}
    for row in rows:  # in insert order: the last upsert of an item wins
        fields = json.loads(row["fields"])
        latest[row["item_id"]] = {**fields.get("numeric", {}), **fields.get("text", {})}
    return pd.DataFrame([{schema.ITEM_ID: k, **v} for k, v in latest.items()])


def with_upserts(items: pd.DataFrame, upserted: pd.DataFrame) -> pd.DataFrame:
    """Item ids seen in the log, with the columns of the upserted ones; sorted by id."""
    if upserted.empty:
        return items
    bare = items[~items[schema.ITEM_ID].isin(upserted[schema.ITEM_ID])]
    merged = pd.concat([upserted, bare], ignore_index=True)
    return merged.sort_values(schema.ITEM_ID, ignore_index=True)


def write_export(tables: dict[str, pd.DataFrame], out: Path, negatives: bool) -> None:
    """Write the tables into a temp folder beside ``out``, then swap it in."""
    ours = out.is_dir() and (not any(out.iterdir()) or (out / EXPORT_MARKER).exists())
    if out.exists() and not ours:
        raise ConfigError(f"--out {out} exists and is not an earlier export: choose another")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tables["interactions"].to_parquet(tmp / schema.INTERACTIONS_FILE, index=False)
        tables["items"].to_parquet(tmp / schema.ITEMS_FILE, index=False)
        if negatives:
            tables["impressions"].to_parquet(tmp / IMPRESSIONS_FILE, index=False)
        counts = {name: len(frame) for name, frame in tables.items()}
        (tmp / EXPORT_MARKER).write_text(json.dumps(counts, indent=2) + "\n")
        old = out.with_name(f".{out.name}.old") if out.exists() else None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export_training_data(
    engine: sa.Engine,
    out: Path,
    window: Window | None = None,
    attribution: timedelta = DEFAULT_ATTRIBUTION,
    negatives: bool = True,
) -> dict[str, int]:
    """Export the window's feedback and impressions as a training.data input folder."""
    window = window or Window()
    imps, fbs = load_events(engine, window, attribution)
    tables = training_tables(imps, fbs, window, attribution)
    tables["items"] = with_upserts(tables["items"], upserted_items(engine, window.until))
    if tables["interactions"].empty:
        raise ConfigError("no feedback events in the window: nothing to train on")
    write_export(tables, Path(out), negatives)
    return {name: len(frame) for name, frame in tables.items()}


# --- command line ---------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: see the module docstring."""
    p = argparse.ArgumentParser(
        prog="python -m serving.events_cli",
        description="Create the event tables, import feedback, export training data.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create the tables and indexes that are missing")
    imp = sub.add_parser("import", help="bulk-import feedback from CSV/Parquet files")
    imp.add_argument("files", nargs="+", type=Path, help=".csv, .tsv or .parquet files")
    exp = sub.add_parser("export", help="impressions + feedback -> training.data folder")
    exp.add_argument("--out", required=True, type=Path, help="output folder")
    exp.add_argument("--since", type=parse_time, help="first time included (ISO, UTC)")
    exp.add_argument("--until", type=parse_time, help="times before this (ISO, UTC)")
    exp.add_argument("--attribution-hours", type=float, default=24.0, help="see serving.report")
    exp.add_argument(
        "--no-negatives", action="store_true", help="skip impressions.parquet (labelled shows)"
    )
    for command in (create, imp, exp):
        command.add_argument("--url", required=True, help="event store SQLAlchemy URL")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    """Run one command; return its one-line result."""
    engine = make_engine(args.url, must_exist=args.command == "export")
    try:
        create_tables(engine)
        if args.command == "create":
            return f"tables ready in {engine.url!r}"
        if args.command == "import":
            return f"imported {import_files(engine, args.files)} feedback events"
        window = Window(args.since, args.until)
        attribution = timedelta(hours=args.attribution_hours)
        counts = export_training_data(engine, args.out, window, attribution, not args.no_negatives)
        return f"exported to {args.out}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 2 on bad input (nothing stored), 1 when the store is unreachable."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(
        lambda: run(args),
        bad_input=(ConfigError, InvalidArgument, OSError, ValueError),
        unavailable=(sa.exc.SQLAlchemyError,),
        service=event_store_name(args.url),
    )


if __name__ == "__main__":
    sys.exit(main())
