"""Reading and validating raw tables: the checks behind ``python -m training.data``.

``load_directory`` reads a user's ``interactions`` / ``items`` / optional ``users`` tables
(CSV, TSV or Parquet; ids always as strings, see docs/DATA.md);
``canonicalize`` checks them and returns the canonical columns of docs/ARCHITECTURE.md §1.
Every problem raises ``DataValidationError`` (a ``ValueError``) whose message names the
file, the column and the fix. Exact duplicate events are dropped and counted; events whose
item is missing from the items table are kept and the item is added without text.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core import schema

log = logging.getLogger("training.data")

DEFAULT_EVENT = "interaction"  # the event of rows whose source has no event column
TABLE_SUFFIXES = (".parquet", ".csv", ".tsv")
# canonical row order: per user by time; item_id (then event, value) breaks ties (DESIGN.md)
SORT_KEYS = [schema.USER_ID, schema.TIMESTAMP, schema.ITEM_ID, schema.EVENT, schema.VALUE]


class DataValidationError(ValueError):
    """Input data that cannot be used; the message names the file, the column and the fix."""


@dataclass(frozen=True)
class RawTables:
    """Tables as a source delivers them, before validation; ``files`` names them in errors."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None
    source: str
    files: dict[str, str] = field(
        default_factory=lambda: {"interactions": "interactions", "items": "items", "users": "users"}
    )


# --- reading ------------------------------------------------------------------------------


def read_table(path: Path) -> pd.DataFrame:
    """Read one CSV/TSV/Parquet table; id columns stay strings ("007" is not 7)."""
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise DataValidationError(f"{path}: not a readable Parquet file ({exc})") from exc
    sep = "\t" if path.suffix == ".tsv" else ","
    try:
        return pd.read_csv(
            path,
            sep=sep,
            dtype={schema.USER_ID: str, schema.ITEM_ID: str, schema.TIMESTAMP: str},
            keep_default_na=False,  # only an empty cell is missing: "NA" may be a title
            na_values=[""],
        )
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError(f"{path}: the file is empty; add a header row and data") from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        kind = path.suffix[1:].upper()
        raise DataValidationError(f"{path}: cannot parse it as {kind} ({exc})") from exc


def find_table(directory: Path, stem: str) -> Path | None:
    """The one ``<stem>.parquet|csv|tsv`` in ``directory``, or None; two is ambiguous."""
    found = [
        directory / f"{stem}{s}" for s in TABLE_SUFFIXES if (directory / f"{stem}{s}").exists()
    ]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataValidationError(f"{directory}: both {names} exist; keep only one of them")
    return found[0] if found else None


def load_directory(directory: Path) -> RawTables:
    """Read a user's folder of interactions, items and optional users tables (docs/DATA.md)."""
    if not directory.is_dir():
        raise DataValidationError(f"--data {directory}: no such folder")
    paths = {stem: find_table(directory, stem) for stem in ("interactions", "items", "users")}
    for stem in ("interactions", "items"):
        if paths[stem] is None:
            raise DataValidationError(
                f"{directory}: no {stem}.csv or {stem}.parquet; add it (see docs/DATA.md) "
                "or point --data at a GroupLens folder with u.data, u.item, u.user"
            )
    frames = {stem: read_table(p) if p else None for stem, p in paths.items()}
    files = {stem: str(p) for stem, p in paths.items() if p is not None}
    return RawTables(
        frames["interactions"], frames["items"], frames["users"], directory.name, files
    )


# --- validation -----------------------------------------------------------------------------


def _rows(mask: pd.Series, values: pd.Series | None = None, limit: int = 3) -> str:
    """'rows 2, 7' (1-based data rows, header not counted) with their values when given."""
    idx = np.flatnonzero(mask.to_numpy())[:limit]
    if values is None:
        return ", ".join(str(i + 1) for i in idx)
    return ", ".join(f"{i + 1} ({values.iloc[i]!r})" for i in idx)


def require_columns(df: pd.DataFrame, columns: tuple[str, ...], file: str) -> None:
    """Fail on an empty table or one without the required columns."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataValidationError(
            f"{file}: missing column(s) {', '.join(map(repr, missing))} (found: "
            f"{', '.join(map(str, df.columns)) or 'none'}); rename or add them (docs/DATA.md)"
        )
    if df.empty:
        raise DataValidationError(f"{file}: the table has no rows; add data")


def stripped_strings(values: pd.Series) -> pd.Series:
    """Values as stripped str (None where missing). Works on the distinct values only,
    which is what keeps 10M-row id columns fast."""
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    text = pd.Index(uniques).astype(str).str.strip().to_numpy(dtype=object)
    out = np.append(text, None)[codes]  # code -1 (missing) picks the trailing None
    return pd.Series(out, index=values.index, dtype=object)


def as_ids(values: pd.Series, file: str, column: str) -> pd.Series:
    """Ids as stripped strings; integer-valued floats lose their '.0'; blanks are an error."""
    if pd.api.types.is_float_dtype(values) and values.dropna().mod(1).eq(0).all():
        values = values.astype("Int64")
    ids = stripped_strings(values)
    missing = ids.isna() | ids.eq("")
    if missing.any():
        raise DataValidationError(
            f"{file}: column {column!r} is empty in {int(missing.sum())} row(s) (rows "
            f"{_rows(missing)}); fill in the id or delete those rows"
        )
    return ids


def parse_timestamps(values: pd.Series, file: str) -> pd.Series:
    """Epoch seconds (int/float) or ISO 8601 strings -> datetime64[ns, UTC].
    Naive ISO strings are taken as UTC."""
    col = schema.TIMESTAMP
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        parsed = values.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(values):
        parsed = values.dt.tz_localize("UTC")
    else:
        numeric = pd.api.types.is_numeric_dtype(values)  # skip string work on big int columns
        text = None if numeric else values.astype(str).str.strip().where(values.notna())
        seconds = values if numeric else pd.to_numeric(text, errors="coerce")
        if seconds.abs().max() > 1e11:
            raise DataValidationError(
                f"{file}: column {col!r} holds numbers like {seconds.abs().max():.0f}, too big "
                "for epoch seconds (milliseconds?); divide them by 1000"
            )
        parsed = pd.to_datetime(seconds, unit="s", utc=True)
        is_text = seconds.isna() & (text.notna() if text is not None else False)
        if is_text.any():
            iso = pd.to_datetime(text[is_text], utc=True, errors="coerce", format="ISO8601")
            parsed = parsed.where(~is_text, iso)
    bad = parsed.isna()
    if bad.any():
        raise DataValidationError(
            f"{file}: column {col!r} has {int(bad.sum())} value(s) that are not timestamps "
            f"(rows {_rows(bad, values)}); use epoch seconds (1700000000) or ISO 8601 "
            "(2024-01-31T12:00:00Z), or delete those rows"
        )
    return parsed.astype("datetime64[ns, UTC]")


def clean_interactions(df: pd.DataFrame, file: str) -> tuple[pd.DataFrame, int]:
    """The five canonical columns, typed; returns (rows without exact duplicates, dropped)."""
    require_columns(df, (schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP), file)
    df = df.reset_index(drop=True)
    event = df[schema.EVENT] if schema.EVENT in df else pd.Series(DEFAULT_EVENT, index=df.index)
    value = df[schema.VALUE] if schema.VALUE in df else pd.Series(np.nan, index=df.index)
    number = pd.to_numeric(value, errors="coerce")
    bad = number.isna() & value.notna() & value.astype(str).str.strip().ne("")
    if bad.any():
        raise DataValidationError(
            f"{file}: column {schema.VALUE!r} is not a number in rows {_rows(bad, value)}; "
            "use numbers (or leave the cell empty)"
        )
    out = pd.DataFrame(
        {
            schema.USER_ID: as_ids(df[schema.USER_ID], file, schema.USER_ID),
            schema.ITEM_ID: as_ids(df[schema.ITEM_ID], file, schema.ITEM_ID),
            schema.TIMESTAMP: parse_timestamps(df[schema.TIMESTAMP], file),
            schema.EVENT: stripped_strings(event).fillna(DEFAULT_EVENT),
            schema.VALUE: number.astype("float64"),
        }
    )
    deduped = out.drop_duplicates(ignore_index=True)
    return deduped, len(out) - len(deduped)


def clean_entities(df: pd.DataFrame | None, key: str, seen: pd.Series, file: str) -> pd.DataFrame:
    """Items or users: one row per id; ids seen only in interactions are added with nulls."""
    if df is None:
        df = pd.DataFrame({key: pd.Series([], dtype=object)})
    else:
        require_columns(df, (key,), file)
        df = df.reset_index(drop=True).assign(**{key: lambda d: as_ids(d[key], file, key)})
        dup = df[key].duplicated(keep=False)
        if dup.any():
            raise DataValidationError(
                f"{file}: {int(dup.sum())} rows share a {key} (rows {_rows(dup, df[key])}); "
                f"keep one row per {key}"
            )
        for col in df.columns.drop(key):  # text columns: str with None for missing
            if df[col].dtype == object or pd.api.types.is_string_dtype(df[col]):
                df[col] = df[col].astype(object).where(df[col].notna(), None)
    extra = pd.Index(seen.unique()).difference(pd.Index(df[key]))
    if len(extra):
        df = pd.concat([df, pd.DataFrame({key: extra.to_numpy(dtype=object)})], ignore_index=True)
    return df


def sort_interactions(df: pd.DataFrame, by: Sequence[str] = tuple(SORT_KEYS)) -> pd.DataFrame:
    """Rows in ``by`` order (default ``SORT_KEYS``), ids in ``schema.id_order_codes``
    order: np.lexsort over integer codes, much faster than sorting the string columns
    directly at 10M rows. Every part that orders interactions (split, feature histories,
    training events) goes through here, so they agree on ties."""
    keys = []
    for col in reversed(list(by)):  # lexsort: the last key is the primary one
        values = df[col]
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            keys.append(values.astype("int64").to_numpy())  # ns since epoch, UTC
        elif col in (schema.USER_ID, schema.ITEM_ID):
            keys.append(schema.id_order_codes(values))  # numeric ids order as numbers
        elif values.dtype == object:
            keys.append(pd.factorize(values, sort=True)[0])
        else:
            keys.append(values.to_numpy())
    order = np.lexsort(keys)
    return df.take(order).reset_index(drop=True)


def canonicalize(
    raw: RawTables,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Validate raw tables -> (interactions, items, users, counts of dropped/added rows)."""
    names = raw.files
    interactions, n_dup = clean_interactions(raw.interactions, names["interactions"])
    items = clean_entities(raw.items, schema.ITEM_ID, interactions[schema.ITEM_ID], names["items"])
    n_known = len(raw.items)  # clean_entities appends the ids it adds after these rows
    unknown = ~interactions[schema.ITEM_ID].isin(items[schema.ITEM_ID].iloc[:n_known])
    users = clean_entities(
        raw.users, schema.USER_ID, interactions[schema.USER_ID], names.get("users", "users")
    )
    counts = {
        "duplicates_dropped": n_dup,
        "unknown_item_interactions": int(unknown.sum()),
        "unknown_items": len(items) - n_known,
        "users_added": len(users) - (0 if raw.users is None else len(raw.users)),
    }
    if counts["unknown_items"]:
        log.warning(
            "%s: %d interactions name %d items missing from %s; kept as items without text",
            names["interactions"],
            counts["unknown_item_interactions"],
            counts["unknown_items"],
            names["items"],
        )
    if n_dup:
        log.warning("%s: dropped %d exact duplicate events", names["interactions"], n_dup)
    return sort_interactions(interactions), items, users, counts
