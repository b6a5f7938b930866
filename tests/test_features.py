"""The features step: pure functions on tiny tables with a known answer, the embedding
cache (a re-run encodes only the new item), serve vs eval inputs, and bad input that
fails clearly without writing anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import schema
from training import data, encoder, features

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def _interactions(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    """(user, item, minutes after T0) -> an interactions table."""
    return pd.DataFrame(
        {
            schema.USER_ID: [r[0] for r in rows],
            schema.ITEM_ID: [r[1] for r in rows],
            schema.TIMESTAMP: [T0 + pd.Timedelta(minutes=r[2]) for r in rows],
        }
    )


def test_item_text_joins_fields_and_flags_empty_items() -> None:
    items = pd.DataFrame(
        {
            schema.ITEM_ID: ["a", "b", "c"],
            "description": ["Red shoe", None, None],
            "title": ["Shoe", "Hat", None],
            "genres": [["Comedy", "Drama"], [], None],
            "year": [1995.0, np.nan, np.nan],
            "price": [9.5, 3.0, 1.0],  # a number, not text
        }
    )
    text = features.item_text(items)
    assert list(text.index) == ["a", "b", "c"]
    assert text["a"] == "title: Shoe; genres: Comedy, Drama; year: 1995; description: Red shoe"
    assert text["b"] == "title: Hat"
    assert text["c"] == ""


def test_items_without_text_columns_is_a_clear_error() -> None:
    items = pd.DataFrame({schema.ITEM_ID: ["a"], "price": [1.0]})
    with pytest.raises(features.FeaturesError, match=r"no text column.*title.*has_text=0"):
        features.item_text(items)


def test_item_statistics_counts_ranks_and_tail() -> None:
    inter = _interactions(
        [("u1", "b", 5), ("u2", "b", 1), ("u1", "a", 3), ("u2", "a", 2), ("u1", "c", 4)]
    )
    stats = features.item_statistics(inter, ["a", "b", "c", "d", "e"])
    assert stats[schema.INTERACTION_COUNT].tolist() == [2, 2, 1, 0, 0]
    # ties broken by item id: a before b, d before e
    assert stats[schema.POPULARITY_RANK].tolist() == [1, 2, 3, 4, 5]
    assert stats[schema.IS_TAIL].tolist() == [0, 1, 1, 1, 1]  # 20% of 5 items = 1 head
    assert stats.loc["a", schema.FIRST_SEEN] == T0 + pd.Timedelta(minutes=2)
    assert pd.isna(stats.loc["d", schema.FIRST_SEEN])


def test_user_histories_keep_last_n_oldest_first() -> None:
    inter = _interactions(
        [("u1", "x", 3), ("u1", "y", 1), ("u1", "z", 2), ("u1", "w", 3), ("u2", "x", 0)]
    )
    hist = features.user_histories(inter, history_len=3)
    # sorted by (timestamp, item_id): y(1) z(2) w(3) x(3); the last three
    assert hist.loc["u1", schema.HISTORY] == ["z", "w", "x"]
    assert hist.loc["u1", schema.HISTORY_LEN] == 3
    assert hist.loc["u2", schema.HISTORY] == ["x"]
    assert features.user_histories(inter.iloc[:0]).empty
    with pytest.raises(features.FeaturesError, match="history-len"):
        features.user_histories(inter, history_len=0)


def test_serve_uses_all_interactions_eval_only_train(
    tiny_dataset_dir: Path, tiny_features_dir: Path, embedding_cache_dir: Path, tmp_path: Path
) -> None:
    serve = pd.read_parquet(tiny_features_dir / schema.USER_FEATURES_FILE).set_index("user_id")
    features.build_features(tiny_dataset_dir, tmp_path, "eval", cache_dir=embedding_cache_dir)
    evals = pd.read_parquet(tmp_path / schema.USER_FEATURES_FILE).set_index(schema.USER_ID)
    inter = pd.read_parquet(tiny_dataset_dir / schema.INTERACTIONS_FILE)
    train = pd.read_parquet(tiny_dataset_dir / schema.TRAIN_FILE)
    last = inter.sort_values([schema.TIMESTAMP, schema.ITEM_ID]).groupby(schema.USER_ID).last()
    for user, row in last.iterrows():  # serving: the most recent item ends the history
        assert list(serve.loc[user, schema.HISTORY])[-1] == row[schema.ITEM_ID]
    expected = features.user_histories(train)
    for user, row in expected.iterrows():
        assert list(evals.loc[user, schema.HISTORY]) == row[schema.HISTORY]
    items = pd.read_parquet(tmp_path / schema.ITEM_FEATURES_FILE)
    assert items[schema.INTERACTION_COUNT].sum() == len(train)
    assert items[schema.EVENT_TIMESTAMP].max() == train[schema.TIMESTAMP].max()


def test_features_files_follow_the_contract(tiny_features_dir: Path) -> None:
    items = pd.read_parquet(tiny_features_dir / schema.ITEM_FEATURES_FILE)
    users = pd.read_parquet(tiny_features_dir / schema.USER_FEATURES_FILE)
    assert list(items.columns) == [
        schema.ITEM_ID, schema.EVENT_TIMESTAMP, schema.CONTENT_VEC, schema.HAS_TEXT,
        schema.INTERACTION_COUNT, schema.POPULARITY_RANK, schema.IS_TAIL, schema.FIRST_SEEN,
        schema.TITLE,
    ]  # fmt: skip
    assert list(users.columns) == [
        schema.USER_ID, schema.EVENT_TIMESTAMP, schema.HISTORY, schema.HISTORY_LEN,
        schema.HISTORY_TS, schema.USER_ATTRIBUTES,
    ]  # fmt: skip
    for hist, times in zip(users[schema.HISTORY], users[schema.HISTORY_TS], strict=True):
        assert len(times) == len(hist) and list(times) == sorted(times)  # epoch ms, in order
    vecs = np.stack(items[schema.CONTENT_VEC].to_numpy())
    assert vecs.shape[1] == 384 and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)  # MiniLM normalises
    assert sorted(items[schema.POPULARITY_RANK]) == list(range(1, len(items) + 1))
    counts = items.set_index(schema.ITEM_ID)[schema.INTERACTION_COUNT]
    expected_tail = schema.head_tail_flags(counts)
    assert items[schema.IS_TAIL].tolist() == expected_tail.tolist()
    assert all(isinstance(json.loads(a), dict) for a in users[schema.USER_ATTRIBUTES])
    summary = json.loads((tiny_features_dir / schema.FEATURES_SUMMARY_FILE).read_text())
    assert summary["items"] == len(items) and summary["content_dim"] == 384


def _copy_dataset(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def test_rerun_embeds_only_the_new_item(
    tiny_dataset_dir: Path, embedding_cache_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    data = _copy_dataset(tiny_dataset_dir, tmp_path / "data")
    cache = shutil.copytree(embedding_cache_dir, tmp_path / "cache")
    first = features.build_features(data, tmp_path / "out1", cache_dir=cache)
    n_items = first["items"]
    items = pd.read_parquet(data / schema.ITEMS_FILE)
    new = {c: [None] for c in items.columns} | {
        schema.ITEM_ID: ["i_new"], "title": ["Zebra striped umbrella"], "category": ["home"],
    }  # fmt: skip
    items = pd.concat([items, pd.DataFrame(new).astype(items.dtypes.to_dict())])
    items.to_parquet(data / schema.ITEMS_FILE, index=False)
    model = encoder.load_text_encoder(str(encoder.resolve_model_path(None)))  # the default
    sent: list[str] = []  # every text that reaches the real encoder
    real_encode = model.encode
    monkeypatch.setattr(model, "encode", lambda t, *a: sent.extend(t) or real_encode(t, *a))
    second = features.build_features(data, tmp_path / "out2", cache_dir=cache)
    assert sent == ["title: Zebra striped umbrella; category: home"]
    assert (second["texts_encoded"], second["texts_cached"]) == (1, n_items)
    out = pd.read_parquet(tmp_path / "out2" / schema.ITEM_FEATURES_FILE).set_index("item_id")
    text = features.item_text(items.iloc[[-1]]).iloc[0]
    direct = encoder.embed_texts([text], cache_dir=None)[0]
    np.testing.assert_allclose(out.loc["i_new", schema.CONTENT_VEC], direct, atol=1e-5)
    assert out.loc["i_new", schema.INTERACTION_COUNT] == 0 and out.loc["i_new", "has_text"] == 1


def test_item_without_text_gets_flag_and_zero_vector(tmp_path: Path) -> None:
    vecs = features.embed_texts(["", "a red shoe", "  "], cache_dir=tmp_path)
    assert vecs.shape == (3, 384)
    assert not vecs[0].any() and not vecs[2].any() and vecs[1].any()


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())} if out.exists() else {}


def test_bad_inputs_fail_clearly_and_write_nothing(
    tiny_dataset_dir: Path, tiny_features_dir: Path, tmp_path: Path
) -> None:
    out = shutil.copytree(tiny_features_dir, tmp_path / "out")  # a previous good build
    before = _outputs(out)
    with pytest.raises(encoder.EncoderNotFoundError, match="/no/such/model"):
        features.build_features(tiny_dataset_dir, out, encoder="/no/such/model")
    data = _copy_dataset(tiny_dataset_dir, tmp_path / "data")
    items = pd.read_parquet(data / schema.ITEMS_FILE)
    items[[schema.ITEM_ID, "price"]].to_parquet(data / schema.ITEMS_FILE, index=False)
    with pytest.raises(features.FeaturesError, match="no text column"):
        features.build_features(data, out)
    with pytest.raises(features.FeaturesError, match="training.data"):
        features.build_features(tmp_path / "missing", out)
    assert _outputs(out) == before


def test_cli_help_and_bad_encoder_exit_code(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        features.main(["--help"])
    assert exc.value.code == 0
    rc = features.main(["--data", str(tiny_dataset_dir), "--out", str(tmp_path / "o"),
                        "--encoder", str(tmp_path / "nope")])  # fmt: skip
    assert rc == 2 and not (tmp_path / "o").exists()


def test_numeric_ids_tie_the_same_way_in_split_stats_and_histories() -> None:
    # ten items, one user, one timestamp: only the id order decides
    ids = [str(i) for i in range(1, 11)]
    inter = pd.DataFrame(
        {
            schema.USER_ID: "u",
            schema.ITEM_ID: ids[::-1],
            schema.TIMESTAMP: pd.to_datetime([5] * 10, unit="s", utc=True),
            schema.EVENT: "view",
            schema.VALUE: np.nan,
        }
    )
    stats = features.item_statistics(inter, ids)
    assert stats[schema.POPULARITY_RANK].tolist() == list(range(1, 11))  # "10" ranks last
    head = stats[schema.POPULARITY_RANK] <= int(np.floor(schema.HEAD_SHARE * len(ids)))
    assert (stats[schema.IS_TAIL] == (~head).astype(int)).all()
    _, _, test = data.leave_last_out(inter)
    history = features.user_histories(inter, history_len=3).loc["u", schema.HISTORY]
    assert list(history) == ["8", "9", "10"] and history[-1] == test[schema.ITEM_ID].iloc[0]
