"""Exposure report over the event log: did the long tail get seen, and was it clicked?

Per model version, over a time window of impressions (``shown_at`` in [since, until)):
impressions, requests, tail share of impressions, Gini of item exposure, catalogue
coverage, CTR overall / head / tail, and CTR by position; printed as a table, and with
``--out DIR`` also written as CSV plus two PNG plots (exposure Lorenz curve, CTR by
position).

    python -m serving.report --url sqlite:///data/events.db \\
        --features feature_repo/data/movielens-100k
    python -m serving.report --url postgresql+psycopg://postgres@127.0.0.1/test \\
        --since 2026-11-01 --until 2026-11-08 --catalogue-size 1682 --out reports/week45

Click attribution (docs/EVENTS.md): an impression counts as clicked when a click, cart or
purchase event names its ``request_id`` and ``item_id``; an event without a request id is
attributed to the latest impression of the same user and item shown at most
``--attribution-hours`` (default 24) before it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from core.cli import run_cli, setup_logging
from core.schema import gini
from serving.errors import ConfigError
from serving.eventschema import feedback, impressions, make_engine
from serving.report_plots import catalogue_size_from_features, save_outputs

log = logging.getLogger(__name__)

DEFAULT_ATTRIBUTION = timedelta(hours=24)


@dataclass(frozen=True)
class Window:
    """Impressions shown in [since, until); None leaves that side open."""

    since: datetime | None = None
    until: datetime | None = None


def _between(column: sa.Column, since: datetime | None, until: datetime | None) -> list:
    conditions = []
    if since is not None:
        conditions.append(column >= since)
    if until is not None:
        conditions.append(column < until)
    return conditions


def load_events(
    engine: sa.Engine, window: Window, attribution: timedelta = DEFAULT_ATTRIBUTION
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(impressions in the window, feedback that may be attributed to them)."""
    until_fb = None if window.until is None else window.until + attribution
    imp_q = sa.select(impressions).where(
        *_between(impressions.c.shown_at, window.since, window.until)
    )
    fb_q = sa.select(feedback).where(*_between(feedback.c.occurred_at, window.since, until_fb))
    with engine.connect() as conn:
        imps = pd.DataFrame(conn.execute(imp_q).mappings().all(), columns=impressions.c.keys())
        fbs = pd.DataFrame(conn.execute(fb_q).mappings().all(), columns=feedback.c.keys())
    for frame, col in ((imps, "shown_at"), (fbs, "occurred_at")):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    imps["is_tail"] = imps["is_tail"].astype(bool)
    return imps, fbs


def label_clicks(
    imps: pd.DataFrame, fbs: pd.DataFrame, attribution: timedelta = DEFAULT_ATTRIBUTION
) -> pd.Series:
    """0/1 per impression (aligned to ``imps``): did a click/cart/purchase follow it?"""
    clicked_ids: set[int] = set()
    with_req = fbs[fbs["request_id"].notna()]
    by_req = imps.merge(with_req[["request_id", "item_id"]], on=["request_id", "item_id"])
    clicked_ids.update(by_req["id"].tolist())
    no_req = fbs[fbs["request_id"].isna()].sort_values("occurred_at")
    if len(no_req) and len(imps):
        shown = imps[["id", "user_id", "item_id", "shown_at"]].sort_values("shown_at")
        matched = pd.merge_asof(
            no_req[["user_id", "item_id", "occurred_at"]],
            shown,
            left_on="occurred_at",
            right_on="shown_at",
            by=["user_id", "item_id"],
            direction="backward",
            tolerance=pd.Timedelta(attribution),
        )
        clicked_ids.update(matched["id"].dropna().astype(int).tolist())
    return imps["id"].isin(clicked_ids).astype(int)


def exposure_counts(imps: pd.DataFrame, catalogue_size: int | None) -> np.ndarray:
    """Impressions per item, padded with zeros for catalogue items never shown."""
    counts = imps["item_id"].value_counts().to_numpy()
    if catalogue_size is not None and catalogue_size > counts.size:
        counts = np.concatenate([counts, np.zeros(catalogue_size - counts.size, dtype=int)])
    return counts


def _ctr(clicked: pd.Series) -> float:
    return float(clicked.mean()) if len(clicked) else float("nan")


def summarize(labelled: pd.DataFrame, catalogue_size: int | None) -> pd.DataFrame:
    """One row per model version; ``labelled`` is impressions with a ``clicked`` column."""
    rows = []
    for version, g in labelled.groupby("model_version", sort=True):
        distinct = g["item_id"].nunique()
        if catalogue_size is not None and catalogue_size < distinct:
            log.warning("catalogue size %d < %d distinct items shown", catalogue_size, distinct)
        rows.append(
            {
                "model_version": version,
                "impressions": len(g),
                "requests": g["request_id"].nunique(),
                "distinct_items": distinct,
                "tail_share": float(g["is_tail"].mean()),
                "gini": gini(exposure_counts(g, catalogue_size)),
                "coverage": distinct / catalogue_size if catalogue_size else float("nan"),
                "clicks": int(g["clicked"].sum()),
                "ctr": _ctr(g["clicked"]),
                "ctr_head": _ctr(g.loc[~g["is_tail"], "clicked"]),
                "ctr_tail": _ctr(g.loc[g["is_tail"], "clicked"]),
            }
        )
    return pd.DataFrame(rows)


def ctr_by_position(labelled: pd.DataFrame) -> pd.DataFrame:
    """Impressions, clicks and CTR per (model_version, position)."""
    grouped = labelled.groupby(["model_version", "position"], sort=True)["clicked"]
    table = grouped.agg(impressions="size", clicks="sum").reset_index()
    table["ctr"] = table["clicks"] / table["impressions"]
    return table


def build_report(
    engine: sa.Engine,
    window: Window,
    catalogue_size: int | None = None,
    attribution: timedelta = DEFAULT_ATTRIBUTION,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(summary per version, CTR by position, labelled impressions) for the window."""
    imps, fbs = load_events(engine, window, attribution)
    labelled = imps.assign(clicked=label_clicks(imps, fbs, attribution))
    return summarize(labelled, catalogue_size), ctr_by_position(labelled), labelled


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or time; without a zone it is taken as UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO date/time, e.g. 2026-11-01 or 2026-11-01T12:00:00+00:00"
        ) from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: see the module docstring."""
    p = argparse.ArgumentParser(
        prog="python -m serving.report",
        description="Exposure and CTR per model version from the tailrank event log.",
    )
    p.add_argument("--url", required=True, help="event store SQLAlchemy URL")
    p.add_argument("--since", type=parse_time, help="first shown_at included (ISO, UTC)")
    p.add_argument("--until", type=parse_time, help="shown_at before this (ISO, UTC)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--catalogue-size", type=int, help="items in the catalogue (coverage)")
    size.add_argument(
        "--features", type=Path, help="feature folder with item_features.parquet (catalogue)"
    )
    p.add_argument(
        "--attribution-hours",
        type=float,
        default=24.0,
        help="attribute an event without request_id to an impression this recent (default 24)",
    )
    p.add_argument("--out", type=Path, help="folder for report.csv, ctr_by_position.csv, PNGs")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    """Build the report, write the outputs; return the table as text."""
    if args.since and args.until and args.since >= args.until:
        raise ConfigError(f"--since {args.since} is not before --until {args.until}")
    if args.catalogue_size is not None and args.catalogue_size < 1:
        raise ConfigError("--catalogue-size must be >= 1")
    catalogue = args.catalogue_size
    if args.features is not None:
        catalogue = catalogue_size_from_features(args.features)
    engine = make_engine(args.url, must_exist=True)
    try:
        window = Window(args.since, args.until)
        attribution = timedelta(hours=args.attribution_hours)
        summary, by_position, labelled = build_report(engine, window, catalogue, attribution)
    finally:
        engine.dispose()
    if summary.empty:
        return "no impressions in the window"
    if args.out is not None:
        exposure = {
            str(v): exposure_counts(g, catalogue) for v, g in labelled.groupby("model_version")
        }
        save_outputs(args.out, summary, by_position, exposure, catalogue)
    return summary.to_string(index=False, float_format=lambda v: f"{v:.4f}")


def event_store_name(url: str) -> str:
    """How error messages name the event store: its URL with any password hidden."""
    try:
        return "the event store " + sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "the event store"


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit 2 with a message on bad input, 1 when the store is unreachable."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(
        lambda: run(args),
        bad_input=(ConfigError,),
        unavailable=(sa.exc.SQLAlchemyError,),
        service=event_store_name(args.url),
    )


if __name__ == "__main__":
    sys.exit(main())
