"""Raw data -> canonical, validated tables and the leave-last-out split (docs/ARCHITECTURE.md §1).

Sources: the built-in ``movielens-100k`` and ``synthetic`` data sets, or a folder of your
own ``interactions`` / ``items`` / optional ``users`` tables (CSV or Parquet, see
docs/DATA.md); a GroupLens ``ml-100k`` folder (u.data, u.item, u.user) works too.

    python -m training.data --dataset movielens-100k --out data/movielens-100k
    python -m training.data --dataset synthetic --n-users 1000 --n-items 5000 --out data/syn
    python -m training.data --data path/to/my_shop --out data/my_shop

Bad input raises ``DataValidationError`` (a ``ValueError``) naming the file, the column
and the fix; the CLI prints it and exits with code 2. Outputs appear atomically.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from core import schema
from core.cli import run_cli, setup_logging
from training import movielens, synthetic
from training.tables import (
    DataValidationError,
    RawTables,
    canonicalize,
    load_directory,
    sort_interactions,
)

__all__ = [
    "DataValidationError",
    "RawTables",
    "build",
    "canonicalize",
    "leave_last_out",
    "load_directory",
    "main",
    "summarize",
    "write_dataset",
]

log = logging.getLogger("training.data")

DATASETS = ("movielens-100k", "synthetic")
SPLIT_MIN_EVENTS = 3  # a user with fewer interactions keeps all of them in train
OUTPUT_FILES = {
    "interactions": schema.INTERACTIONS_FILE,
    "items": schema.ITEMS_FILE,
    "users": schema.USERS_FILE,
    "train": schema.TRAIN_FILE,
    "valid": schema.VALID_FILE,
    "test": schema.TEST_FILE,
}


def leave_last_out(
    interactions: pd.DataFrame, presorted: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split into (train, valid, test): per user, sorted by (timestamp, item_id), the last
    interaction is test, the second-last valid, the rest train. Users with fewer than
    ``SPLIT_MIN_EVENTS`` interactions put all of them in train. ``presorted`` skips the
    sort for rows already in canonical order (``canonicalize`` output)."""
    df = interactions if presorted else sort_interactions(interactions)
    users = df[schema.USER_ID].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])  # each user's first row
    sizes = np.diff(np.r_[starts, len(df)])
    ends = np.repeat(starts + sizes, sizes)  # one past each row's user's last row
    from_end = ends - 1 - np.arange(len(df))
    held = np.repeat(sizes >= SPLIT_MIN_EVENTS, sizes)
    test = held & (from_end == 0)
    valid = held & (from_end == 1)
    train = ~(test | valid)
    return tuple(df[m].reset_index(drop=True) for m in (train, valid, test))  # type: ignore[return-value]


def summarize(
    tables: dict[str, pd.DataFrame], counts: dict[str, int], source: str
) -> dict[str, object]:
    """The summary.json content: sizes, dropped/added rows and the head/tail split."""
    train_counts = (
        tables["train"][schema.ITEM_ID]
        .value_counts()
        .reindex(tables["items"][schema.ITEM_ID], fill_value=0)
    )
    is_tail = schema.head_tail_flags(train_counts)
    n_train = int(train_counts.sum())
    head_events = int(train_counts[is_tail.to_numpy() == 0].sum())
    return {
        "source": source,
        "users": len(tables["users"]),
        "items": len(tables["items"]),
        "events": len(tables["interactions"]),
        "train_events": len(tables["train"]),
        "valid_events": len(tables["valid"]),
        "test_events": len(tables["test"]),
        **counts,
        "head_items": int((is_tail == 0).sum()),
        "tail_items": int((is_tail == 1).sum()),
        "head_share_of_train_events": round(head_events / n_train, 4) if n_train else 0.0,
    }


def build(raw: RawTables) -> tuple[dict[str, pd.DataFrame], dict[str, object]]:
    """Validate raw tables, split them and summarise: returns (tables by name, summary)."""
    interactions, items, users, counts = canonicalize(raw)
    train, valid, test = leave_last_out(interactions, presorted=True)
    tables = {
        "interactions": interactions,
        "items": items,
        "users": users,
        "train": train,
        "valid": valid,
        "test": test,
    }
    return tables, summarize(tables, counts, raw.source)


def check_replaceable(out: Path) -> None:
    """Refuse to replace a folder that is not a previous output of this command."""
    if out.exists() and not out.is_dir():
        raise DataValidationError(f"--out {out} is a file: give a folder path")
    if out.is_dir() and any(out.iterdir()) and not (out / schema.SUMMARY_FILE).exists():
        raise DataValidationError(
            f"--out {out} is a non-empty folder that tailrank did not write (no "
            f"{schema.SUMMARY_FILE}); refusing to replace it: choose another --out"
        )


def write_dataset(tables: dict[str, pd.DataFrame], summary: dict[str, object], out: Path) -> Path:
    """Write every table and summary.json into a temp folder beside ``out``, then rename it
    into place, so ``out`` is either the old complete output or the new one."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    check_replaceable(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the output is an ordinary folder
    try:
        for name, frame in tables.items():
            frame.to_parquet(tmp / OUTPUT_FILES[name], index=False)
        (tmp / schema.SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        if out.exists():
            out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            if old.exists():
                old.rename(out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_source(args: argparse.Namespace) -> RawTables:
    """Read the raw tables the CLI arguments point at."""
    if args.data:
        parts = [load_folder(Path(d)) for d in args.data]
        return parts[0] if len(parts) == 1 else combine(parts)
    if args.dataset == "movielens-100k":
        inter, items, users = movielens.load_movielens_100k(Path(args.cache_dir))
        return RawTables(inter, items, users, source="movielens-100k", files=movielens.FILES)
    inter, items, users = synthetic.generate(args.n_users, args.n_items, args.n_events, args.seed)
    return RawTables(inter, items, users, source="synthetic")


def load_folder(directory: Path) -> RawTables:
    """A user's folder (docs/DATA.md) or a GroupLens ml-100k folder."""
    if (directory / movielens.GROUPLENS_INTERACTIONS).is_file():
        inter, items, users = movielens.load_grouplens(directory)
        files = movielens.grouplens_files(directory)
        return RawTables(inter, items, users, source=directory.name, files=files)
    return load_directory(directory)


def combine(parts: list[RawTables]) -> RawTables:
    """Several ``--data`` folders as one data set: every interaction of every folder. An
    item listed in several keeps the row of the last folder that gives it any value
    besides its id (a later ``events_cli export`` carries the texts UpsertItems wrote; its
    id-only rows never replace a row with text); a user keeps the first folder's row.
    Column names follow docs/DATA.md in every folder."""
    inter = pd.concat([p.interactions for p in parts], ignore_index=True)
    items = pd.concat([p.items for p in parts], ignore_index=True)
    described = items.drop(columns=[schema.ITEM_ID]).notna().any(axis=1)
    items = items.assign(_described=described.to_numpy(), _order=np.arange(len(items)))
    items = items.sort_values(["_described", "_order"], kind="stable")  # best row last
    items = items.drop_duplicates(schema.ITEM_ID, keep="last").sort_values("_order")
    items = items.drop(columns=["_described", "_order"]).reset_index(drop=True)
    user_parts = [p.users for p in parts if p.users is not None]
    users = None
    if user_parts:
        users = pd.concat(user_parts, ignore_index=True)
        users = users.drop_duplicates(schema.USER_ID, keep="first", ignore_index=True)
    source = "+".join(p.source for p in parts)
    files = {
        key: " + ".join(p.files[key] for p in parts if key in p.files) for key in parts[0].files
    }
    return RawTables(inter, items, users, source=source, files=files)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m training.data",
        description="Turn raw data into canonical, validated tables and the leave-last-out "
        "split (interactions/items/users/train/valid/test.parquet + summary.json).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=DATASETS, help="a built-in data set")
    src.add_argument(
        "--data",
        metavar="DIR",
        action="append",
        help="your own interactions/items[/users] .csv or .parquet (docs/DATA.md), "
        "or a GroupLens ml-100k folder (u.data, u.item, u.user); give it again to add "
        "folders, e.g. an `events_cli export` of logged Feedback: all interactions are "
        "used, and an item or user keeps the row of the first folder listing it",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (replaced whole)")
    p.add_argument(
        "--cache-dir",
        default="data/raw",
        metavar="DIR",
        help="where downloads are cached (default: data/raw)",
    )
    p.add_argument("--seed", type=int, default=0, help="synthetic: random seed (default: 0)")
    p.add_argument(
        "--n-users", type=positive_int, default=2_000, help="synthetic: users (default 2000)"
    )
    p.add_argument(
        "--n-items", type=positive_int, default=5_000, help="synthetic: items (default 5000)"
    )
    p.add_argument(
        "--n-events", type=positive_int, default=100_000, help="synthetic: events (default 100000)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, object]:
    """Load, validate, split and write; returns the summary."""
    check_replaceable(Path(args.out))  # fail before minutes of work, not after
    raw = load_source(args)
    log.info("validating %d interactions from %s", len(raw.interactions), raw.source)
    tables, summary = build(raw)
    log.info("writing %s", args.out)
    write_dataset(tables, summary, Path(args.out))
    for key, value in summary.items():
        log.info("%-28s %s", key, value)
    return summary


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 on bad input, with no traceback)."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    return run_cli(lambda: summary_line(run(args), args.out), bad_input=(DataValidationError,))


def summary_line(summary: dict[str, object], out: str) -> str:
    """The one line a finished run prints."""
    return (
        f"wrote {out}: {summary['users']} users, {summary['items']} items, "
        f"{summary['events']} events ({summary['head_items']} head / "
        f"{summary['tail_items']} tail items)"
    )


if __name__ == "__main__":
    sys.exit(main())
