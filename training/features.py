"""Item and user features for the Feast offline store, from the canonical tables.

Reads ``interactions`` (``--mode serve``: all of them, so the online store reflects the
latest behaviour) or ``train`` (``--mode eval``: only what precedes the held-out
interactions), ``items`` and ``users`` from ``--data``; writes ``item_features.parquet``
and ``user_features.parquet`` (docs/ARCHITECTURE.md section 2) plus a small
``features_summary.json`` to ``--out``, each atomically. Every row carries the same
event timestamp: the time of the latest interaction used, so ``feast materialize
1970-01-01T00:00:00 <now>`` loads every row.

    python -m training.features --data data/movielens-100k --out feature_repo/data/movielens-100k

(``make features`` keeps one such folder per data set; ``python -m training.feast_repo``
then applies and materializes it.)

Training imports the pure functions ``item_text``, ``item_statistics``,
``user_histories`` and ``embed_texts`` so serving and training compute each feature once.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core import itemtext, schema
from core.cli import LOG_FORMAT, run_cli
from core.contract import DEFAULT_HISTORY_LEN
from core.files import write_many_atomic
from training.encoder import (
    DEFAULT_BACKEND,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CACHE_DIR,
    DEFAULT_PRECISION,
    EmbedStats,
    EncoderNotFoundError,
    embed_texts,
    encoder_description,
    load_encoder,
)
from training.tables import sort_interactions

__all__ = [
    "FeaturesError",
    "embed_texts",
    "item_statistics",
    "item_text",
    "user_histories",
]

log = logging.getLogger(__name__)


class FeaturesError(ValueError):
    """Bad input to the features step; the message says what to fix."""


def text_columns(items: pd.DataFrame) -> list[str]:
    """The items table's text columns: string/object columns (and a year), title first."""
    found = [
        c
        for c in items.columns
        if c != schema.ITEM_ID
        and (
            pd.api.types.is_object_dtype(items[c])
            or pd.api.types.is_string_dtype(items[c])
            or isinstance(items[c].dtype, pd.CategoricalDtype)
            or (c in itemtext.TEXT_NUMERIC_COLUMNS and pd.api.types.is_numeric_dtype(items[c]))
        )
    ]
    return itemtext.order_columns(found)


def item_text(items: pd.DataFrame) -> pd.Series:
    """One string per item (indexed by item_id): "field: value" pairs, "" if no text.

    Raises FeaturesError when the table has no text column at all.
    """
    columns = text_columns(items)
    if not columns:
        raise FeaturesError(
            f"the items table has no text column (columns: {list(items.columns)}): content "
            "vectors are built from string columns besides item_id (e.g. title, category, "
            "brand, description, genres) and a numeric 'year'. Add at least one such column "
            "to items; items whose text is empty or null then get has_text=0."
        )
    parts = [
        items[c].map(itemtext.as_text).map(lambda v, c=c: f"{c}: {v}" if v else "") for c in columns
    ]
    rows = zip(*(p.tolist() for p in parts), strict=True)
    joined = ["; ".join(p for p in row if p) for row in rows]
    index = pd.Index(items[schema.ITEM_ID].astype(str), name=schema.ITEM_ID)
    return pd.Series(joined, index=index, name="text", dtype=object)


def item_statistics(interactions: pd.DataFrame, item_ids: pd.Index | list[str]) -> pd.DataFrame:
    """interaction_count, popularity_rank (1 = most), is_tail, first_seen per item id.

    Interactions of items outside ``item_ids`` are ignored; ranks break ties by item id.
    """
    ids = pd.Index(pd.Index(item_ids).astype(str), name=schema.ITEM_ID)
    grouped = interactions.groupby(interactions[schema.ITEM_ID].astype(str))
    counts = grouped.size().reindex(ids, fill_value=0).astype("int64")
    order = pd.DataFrame(
        {"item": ids, "n": counts.to_numpy(), "id": schema.id_order_codes(ids)}
    ).sort_values(["n", "id"], ascending=[False, True], kind="mergesort")
    rank = pd.Series(np.arange(1, len(ids) + 1, dtype="int64"), index=order["item"].to_numpy())
    first_seen = grouped[schema.TIMESTAMP].min().reindex(ids)
    return pd.DataFrame(
        {
            schema.INTERACTION_COUNT: counts,
            schema.POPULARITY_RANK: rank.reindex(ids).to_numpy(),
            schema.IS_TAIL: schema.head_tail_flags(counts).astype("int64"),
            schema.FIRST_SEEN: pd.to_datetime(first_seen, utc=True),
        },
        index=ids,
    )


def user_histories(
    interactions: pd.DataFrame, history_len: int = DEFAULT_HISTORY_LEN
) -> pd.DataFrame:
    """history (last ``history_len`` item ids, oldest first) and history_len per user.

    Order is (timestamp, item_id) as in the evaluation split; only users with
    interactions appear.
    """
    if history_len < 1:
        raise FeaturesError(f"--history-len must be >= 1, got {history_len}")
    df = interactions[[schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP]].astype(
        {schema.USER_ID: str, schema.ITEM_ID: str}
    )
    df = sort_interactions(df, by=(schema.USER_ID, schema.TIMESTAMP, schema.ITEM_ID))
    last = df.groupby(schema.USER_ID, sort=True).tail(history_len)
    users, items = last[schema.USER_ID].to_numpy(), last[schema.ITEM_ID].to_numpy()
    # rows are grouped by user already: split at each change of user (no per-group Python)
    change = np.r_[True, users[1:] != users[:-1]] if len(users) else np.zeros(0, bool)
    starts = np.flatnonzero(change)
    ends = np.r_[starts[1:], len(users)][: len(starts)]
    history = [items[a:b].tolist() for a, b in zip(starts, ends, strict=True)]
    millis = epoch_ms(last[schema.TIMESTAMP])
    times = [millis[a:b].tolist() for a, b in zip(starts, ends, strict=True)]
    index = pd.Index(users[starts], name=schema.USER_ID)
    lengths = np.asarray([len(h) for h in history], dtype="int64")
    return pd.DataFrame(
        {schema.HISTORY: history, schema.HISTORY_LEN: lengths, schema.HISTORY_TS: times},
        index=index,
    )


def epoch_ms(timestamps: pd.Series) -> np.ndarray:
    """int64 milliseconds since the epoch (UTC; naive times are UTC), floored: the unit of
    a Feedback event's ``timestamp_ms``, so the live path (serving.histories) orders the
    same way."""
    ts = pd.to_datetime(timestamps)
    ts = ts.dt.tz_localize("UTC") if ts.dt.tz is None else ts.dt.tz_convert("UTC")
    return ts.dt.floor("ms").astype("datetime64[ms, UTC]").astype("int64").to_numpy()


def user_attributes(users: pd.DataFrame) -> pd.Series:
    """A JSON object of each user's attribute columns (null for missing), by user_id."""
    attrs = users.drop(columns=[schema.USER_ID])
    if attrs.shape[1] == 0:
        lines = ["{}"] * len(users)
    else:
        lines = attrs.to_json(orient="records", lines=True, date_format="iso").splitlines()
    return pd.Series(lines, index=users[schema.USER_ID].astype(str), dtype=object)


def feature_time(interactions: pd.DataFrame) -> pd.Timestamp:
    """The rows' event timestamp: the latest interaction used, never later than now."""
    now = pd.Timestamp.now(tz="UTC").floor("s")
    if interactions.empty:
        return now
    latest = pd.Timestamp(interactions[schema.TIMESTAMP].max())
    latest = latest.tz_localize("UTC") if latest.tzinfo is None else latest.tz_convert("UTC")
    if latest > now:
        log.warning("interactions run to %s, after now: features are stamped %s", latest, now)
        return now
    return latest


def _read(data_dir: Path, name: str, required: tuple[str, ...]) -> pd.DataFrame:
    path = data_dir / name
    if not path.exists():
        raise FeaturesError(
            f"{path} not found: build the canonical tables first with "
            f"`python -m training.data --out {data_dir}`"
        )
    df = pd.read_parquet(path)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise FeaturesError(f"{path} lacks columns {missing} (has {list(df.columns)})")
    return df


def load_tables(data_dir: Path, mode: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(items, users, interactions) for a mode: serve = all interactions, eval = train."""
    if mode not in ("serve", "eval"):
        raise FeaturesError(f"--mode must be 'serve' or 'eval', got {mode!r}")
    name = schema.INTERACTIONS_FILE if mode == "serve" else schema.TRAIN_FILE
    cols = (schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP)
    interactions = _read(data_dir, name, cols)
    items = _read(data_dir, schema.ITEMS_FILE, (schema.ITEM_ID,))
    if (data_dir / schema.USERS_FILE).exists():
        users = _read(data_dir, schema.USERS_FILE, (schema.USER_ID,))
    else:
        log.warning("%s not found: users come from the interactions only", schema.USERS_FILE)
        users = pd.DataFrame({schema.USER_ID: pd.Series(dtype=object)})
    for df, key, name in ((items, schema.ITEM_ID, "items"), (users, schema.USER_ID, "users")):
        dup = df[key].astype(str).duplicated()
        if dup.any():
            raise FeaturesError(
                f"{name} has duplicate {key}s (e.g. {df[key][dup].iloc[0]!r}): keep one row "
                "per id (python -m training.data dedupes them)"
            )
    # every id that interactions name must have a row (training.data does this already)
    seen = interactions[schema.USER_ID].astype(str)
    extra_users = pd.Index(seen.unique()).difference(users[schema.USER_ID].astype(str))
    extra_items = pd.Index(interactions[schema.ITEM_ID].astype(str).unique()).difference(
        items[schema.ITEM_ID].astype(str)
    )
    if len(extra_users):
        users = pd.concat([users, pd.DataFrame({schema.USER_ID: extra_users})], ignore_index=True)
    if len(extra_items):
        log.warning("%d items appear only in interactions: they get no text", len(extra_items))
        items = pd.concat([items, pd.DataFrame({schema.ITEM_ID: extra_items})], ignore_index=True)
    return items, users, interactions


def build_item_features(
    items: pd.DataFrame,
    interactions: pd.DataFrame,
    as_of: pd.Timestamp,
    embed_kwargs: dict,
    stats: EmbedStats,
) -> pd.DataFrame:
    """The item_features table (docs/ARCHITECTURE.md section 2)."""
    text = item_text(items)
    vectors = embed_texts(text.tolist(), stats=stats, **embed_kwargs)
    stat = item_statistics(interactions, text.index)
    no_title = pd.Series("", items.index)
    title = items["title"].map(itemtext.as_text) if "title" in items.columns else no_title
    return pd.DataFrame(
        {
            schema.ITEM_ID: text.index.to_numpy(),
            schema.EVENT_TIMESTAMP: as_of,
            schema.CONTENT_VEC: list(vectors),
            schema.HAS_TEXT: (text.str.len() > 0).astype("int64").to_numpy(),
            schema.INTERACTION_COUNT: stat[schema.INTERACTION_COUNT].to_numpy(),
            schema.POPULARITY_RANK: stat[schema.POPULARITY_RANK].to_numpy(),
            schema.IS_TAIL: stat[schema.IS_TAIL].to_numpy(),
            schema.FIRST_SEEN: stat[schema.FIRST_SEEN].to_numpy(),
            schema.TITLE: title.to_numpy(),
        }
    )


def encoder_graph(info: dict) -> dict[str, str]:
    """``{"graph": path}`` of the ONNX graph the onnx backend ran (absolute), for the
    server's UpsertItems to embed with the very same graph; {} for the torch backend."""
    if info.get("backend") != "onnx":
        return {}
    from training import text_onnx

    model_dir = Path(info["path"])
    path = text_onnx.ensure_graph(  # exported here when every text came from the cache
        lambda: load_encoder(str(model_dir)), model_dir, info["identity"], info["precision"]
    )
    return {"graph": str(path.resolve())}


def item_columns(items: pd.DataFrame) -> dict[str, list[str]]:
    """The items table's columns as UpsertItems takes them: ``text`` (embedded, in order)
    and ``numeric`` (the other number columns)."""
    text = text_columns(items)
    numeric = [
        c
        for c in items.columns
        if c != schema.ITEM_ID and c not in text and pd.api.types.is_numeric_dtype(items[c])
    ]
    return {"text": text, "numeric": numeric}


def build_user_features(
    users: pd.DataFrame, interactions: pd.DataFrame, history_len: int, as_of: pd.Timestamp
) -> pd.DataFrame:
    """The user_features table; users without interactions get an empty history."""
    attrs = user_attributes(users)
    hist = user_histories(interactions, history_len).reindex(attrs.index)
    history = hist[schema.HISTORY].map(lambda h: h if isinstance(h, list) else [])
    times = hist[schema.HISTORY_TS].map(lambda t: t if isinstance(t, list) else [])
    return pd.DataFrame(
        {
            schema.USER_ID: attrs.index.to_numpy(),
            schema.EVENT_TIMESTAMP: as_of,
            schema.HISTORY: history.to_numpy(),
            schema.HISTORY_LEN: history.map(len).astype("int64").to_numpy(),
            schema.HISTORY_TS: times.to_numpy(),
            schema.USER_ATTRIBUTES: attrs.to_numpy(),
        }
    )


ITEM_ARROW = pa.schema(
    [
        (schema.ITEM_ID, pa.string()),
        (schema.EVENT_TIMESTAMP, pa.timestamp("us", tz="UTC")),
        (schema.CONTENT_VEC, pa.list_(pa.float32())),
        (schema.HAS_TEXT, pa.int64()),
        (schema.INTERACTION_COUNT, pa.int64()),
        (schema.POPULARITY_RANK, pa.int64()),
        (schema.IS_TAIL, pa.int64()),
        (schema.FIRST_SEEN, pa.timestamp("us", tz="UTC")),
        (schema.TITLE, pa.string()),
    ]
)
USER_ARROW = pa.schema(
    [
        (schema.USER_ID, pa.string()),
        (schema.EVENT_TIMESTAMP, pa.timestamp("us", tz="UTC")),
        (schema.HISTORY, pa.list_(pa.string())),
        (schema.HISTORY_LEN, pa.int64()),
        (schema.HISTORY_TS, pa.list_(pa.int64())),
        (schema.USER_ATTRIBUTES, pa.string()),
    ]
)


def write_outputs(out_dir: Path, tables: dict[str, pa.Table], summary: dict) -> None:
    """Write every table and the summary; all files change together or none does."""
    text = json.dumps(summary, indent=2, default=str) + "\n"
    writes = {
        out_dir / name: functools.partial(_write_parquet, table) for name, table in tables.items()
    }
    writes[out_dir / schema.FEATURES_SUMMARY_FILE] = lambda tmp: tmp.write_text(text)
    write_many_atomic(writes)


def _write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path)


def build_features(
    data_dir: Path,
    out_dir: Path,
    mode: str = "serve",
    history_len: int = DEFAULT_HISTORY_LEN,
    encoder: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    encoder_backend: str = DEFAULT_BACKEND,
    encoder_precision: str = DEFAULT_PRECISION,
) -> dict:
    """Run the whole features step; return the summary written beside the parquet files."""
    items, users, interactions = load_tables(Path(data_dir), mode)
    item_text(items.head(0))  # fail on a text-less items table before any slow work
    if history_len < 1:
        raise FeaturesError(f"--history-len must be >= 1, got {history_len}")
    # fails early on a bad --encoder path
    encoder_info = encoder_description(encoder, encoder_backend, encoder_precision)
    as_of = feature_time(interactions)
    stats = EmbedStats()
    embed = {"model_path": encoder, "cache_dir": cache_dir, "batch_size": batch_size}
    embed |= {"backend": encoder_backend, "precision": encoder_precision}
    item_df = build_item_features(items, interactions, as_of, embed, stats)
    user_df = build_user_features(users, interactions, history_len, as_of)
    summary = {
        "mode": mode,
        "data": str(data_dir),
        "event_timestamp": as_of.isoformat(),
        "history_len": history_len,
        "encoder": {**encoder_info, **encoder_graph(encoder_info)},
        "item_columns": item_columns(items),
        "content_dim": int(len(item_df[schema.CONTENT_VEC].iloc[0])) if len(item_df) else 0,
        "items": len(item_df),
        "items_without_text": int((item_df[schema.HAS_TEXT] == 0).sum()),
        "users": len(user_df),
        "interactions": len(interactions),
        "texts_encoded": stats.encoded,
        "texts_cached": stats.cached,
    }
    tables = {
        schema.ITEM_FEATURES_FILE: pa.Table.from_pandas(item_df, ITEM_ARROW, preserve_index=False),
        schema.USER_FEATURES_FILE: pa.Table.from_pandas(user_df, USER_ARROW, preserve_index=False),
    }
    write_outputs(Path(out_dir), tables, summary)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.features", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--data", type=Path, required=True, help="canonical tables (training.data)")
    p.add_argument("--out", type=Path, default=Path("feature_repo/data"), help="output folder")
    p.add_argument(
        "--mode",
        choices=("serve", "eval"),
        default="serve",
        help="serve: all interactions; eval: train split only",
    )
    p.add_argument(
        "--history-len", type=int, default=DEFAULT_HISTORY_LEN, help="last N items kept per user"
    )
    p.add_argument(
        "--encoder",
        default=None,
        help="sentence-transformers model directory (default: all-MiniLM-L6-v2)",
    )
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="encoder batch")
    p.add_argument(
        "--encoder-backend", choices=("onnx", "torch"), default=DEFAULT_BACKEND,
        help="onnx: the encoder exported once, run in ONNX Runtime; torch: sentence-transformers",
    )  # fmt: skip
    p.add_argument(
        "--encoder-precision", choices=("fp32", "int8"), default=DEFAULT_PRECISION,
        help="onnx only: int8 = dynamically quantized graph (own embedding cache)",
    )  # fmt: skip
    p.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="embedding cache folder"
    )
    p.add_argument("--log-level", default="INFO", help="logging level")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)

    def body() -> str:
        summary = build_features(
            args.data, args.out, args.mode, args.history_len, args.encoder,
            args.batch_size, args.cache_dir, args.encoder_backend, args.encoder_precision,
        )  # fmt: skip
        return json.dumps(summary, indent=2)

    return run_cli(body, bad_input=(FeaturesError, EncoderNotFoundError))


if __name__ == "__main__":
    raise SystemExit(main())
