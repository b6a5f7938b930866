"""The Feast repository end to end: apply + materialize, then online reads equal the Parquet.

Once on the default SQLite store (``tiny_feature_repo``) and once on the real PostgreSQL
at 127.0.0.1:5432 (online store + SQL registry, a fresh database per session), selected
by configuration alone. Also: an unreachable PostgreSQL is a clear error, nothing written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from feast import FeatureStore

from core import schema
from tests.fixtures.features import POSTGRES_YAML, copy_feature_repo
from training import features

pytestmark = pytest.mark.integration


def _online(store: FeatureStore, users: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """Every user and item through the ranker service (one entity row per pair)."""
    n = max(len(users), len(items))
    rows = [
        {schema.USER_ID: users[schema.USER_ID].iloc[i % len(users)],
         schema.ITEM_ID: items[schema.ITEM_ID].iloc[i % len(items)]}
        for i in range(n)
    ]  # fmt: skip
    service = store.get_feature_service(schema.FEATURE_SERVICE)
    return store.get_online_features(features=service, entity_rows=rows).to_df()


def assert_online_equals_offline(store: FeatureStore, data_dir: Path) -> None:
    """Values read back online equal the offline Parquet, vectors and lists included."""
    items = pd.read_parquet(data_dir / schema.ITEM_FEATURES_FILE)
    users = pd.read_parquet(data_dir / schema.USER_FEATURES_FILE)
    online = _online(store, users, items)
    got_items = online.drop_duplicates(schema.ITEM_ID).set_index(schema.ITEM_ID)
    got_users = online.drop_duplicates(schema.USER_ID).set_index(schema.USER_ID)
    items, users = items.set_index(schema.ITEM_ID), users.set_index(schema.USER_ID)
    assert set(got_items.index) == set(items.index)
    assert set(got_users.index) == set(users.index)
    got_items, got_users = got_items.loc[items.index], got_users.loc[users.index]
    vec_off = np.stack(items[schema.CONTENT_VEC].to_numpy()).astype(np.float32)
    vec_on = np.stack(got_items[schema.CONTENT_VEC].to_numpy()).astype(np.float32)
    assert vec_on.shape == vec_off.shape and vec_off.shape[1] == 384
    np.testing.assert_array_equal(vec_on, vec_off)
    for col in (schema.HAS_TEXT, schema.INTERACTION_COUNT, schema.POPULARITY_RANK,
                schema.IS_TAIL):  # fmt: skip
        np.testing.assert_array_equal(got_items[col].to_numpy("int64"), items[col].to_numpy())
    assert got_items[schema.TITLE].tolist() == items[schema.TITLE].tolist()
    first_on = pd.to_datetime(got_items[schema.FIRST_SEEN], utc=True)
    pd.testing.assert_index_equal(
        pd.DatetimeIndex(first_on),
        pd.DatetimeIndex(items[schema.FIRST_SEEN]).as_unit("ns"),
        check_names=False,
    )  # noqa: E501
    hist_on = [list(h) if h is not None else [] for h in got_users[schema.HISTORY]]
    assert hist_on == [list(h) for h in users[schema.HISTORY]]
    np.testing.assert_array_equal(
        got_users[schema.HISTORY_LEN].to_numpy("int64"), users[schema.HISTORY_LEN].to_numpy()
    )
    assert [json.loads(a) for a in got_users[schema.USER_ATTRIBUTES]] == [
        json.loads(a) for a in users[schema.USER_ATTRIBUTES]
    ]


def test_sqlite_round_trip(tiny_feature_repo: Path) -> None:
    """The default repo: SQLite online store and file registry under data/."""
    assert (tiny_feature_repo / "data" / "online_store.db").exists()
    assert (tiny_feature_repo / "data" / "registry.db").exists()
    store = FeatureStore(repo_path=str(tiny_feature_repo))
    assert {v.name for v in store.list_feature_views()} == {schema.USER_VIEW, schema.ITEM_VIEW}
    assert_online_equals_offline(store, tiny_feature_repo / "data")


def test_unknown_ids_read_as_missing(tiny_feature_repo: Path) -> None:
    """An id the store has never seen reads back as nulls, not as another row's values."""
    store = FeatureStore(repo_path=str(tiny_feature_repo))
    got = store.get_online_features(
        features=store.get_feature_service(schema.FEATURE_SERVICE),
        entity_rows=[{schema.USER_ID: "no-such-user", schema.ITEM_ID: "no-such-item"}],
    ).to_dict()
    assert got[schema.CONTENT_VEC] == [None] and got[schema.HISTORY] == [None]


def _pg_env(monkeypatch: pytest.MonkeyPatch, repo: Path, db: dict, port: int) -> None:
    monkeypatch.setenv("FEAST_FS_YAML_FILE_PATH", str(repo / POSTGRES_YAML))
    monkeypatch.setenv("TAILRANK_PG_HOST", str(db["host"]))
    monkeypatch.setenv("TAILRANK_PG_PORT", str(port))
    monkeypatch.setenv("TAILRANK_PG_DB", str(db["database"]))
    monkeypatch.setenv("TAILRANK_PG_USER", str(db["user"]))
    monkeypatch.setenv("TAILRANK_PG_PASSWORD", "")


@pytest.mark.postgres
def test_postgres_round_trip(
    postgres_database: dict, tiny_features_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """Environment variables alone switch to PostgreSQL: online store and SQL registry."""
    repo = copy_feature_repo(tmp_path / "repo", tiny_features_dir)
    _pg_env(monkeypatch, repo, postgres_database, int(postgres_database["port"]))
    features.materialize_repo(repo)
    store = FeatureStore(repo_path=str(repo))
    assert store.config.online_store.type == "postgres"
    assert_online_equals_offline(store, repo / "data")
    # nothing went to the SQLite defaults; registry and online tables are in PostgreSQL
    assert sorted(p.name for p in (repo / "data").iterdir()) == sorted(
        [schema.ITEM_FEATURES_FILE, schema.USER_FEATURES_FILE]
    )
    engine = sa.create_engine(str(postgres_database["url"]))
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"feature_views", "entities", "feature_services"} <= tables
    assert {f"tailrank_{schema.USER_VIEW}", f"tailrank_{schema.ITEM_VIEW}"} <= tables


def test_unreachable_postgres_is_a_clear_error(
    tiny_features_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """Port 1: FeatureStoreUnavailableError naming host:port; no registry, no online store."""
    repo = copy_feature_repo(tmp_path / "repo", tiny_features_dir)
    before = sorted(p.name for p in (repo / "data").iterdir())
    nowhere = {"host": "127.0.0.1", "database": "test", "user": "postgres"}
    _pg_env(monkeypatch, repo, nowhere, 1)
    with pytest.raises(features.FeatureStoreUnavailableError, match=r"127\.0\.0\.1:1/"):
        features.materialize_repo(repo)
    assert sorted(p.name for p in (repo / "data").iterdir()) == before


def test_unset_postgres_variables_are_named(tiny_features_dir: Path, tmp_path: Path, monkeypatch):
    """Selecting the PostgreSQL yaml without its variables names the missing ones."""
    repo = copy_feature_repo(tmp_path / "repo", tiny_features_dir)
    for name in ("TAILRANK_PG_HOST", "TAILRANK_PG_PORT", "TAILRANK_PG_DB", "TAILRANK_PG_USER",
                 "TAILRANK_PG_PASSWORD"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(features.FeaturesError, match="TAILRANK_PG_HOST"):
        features.materialize_repo(repo, fs_yaml=repo / POSTGRES_YAML)


def test_no_text_item_and_no_history_user_round_trip(
    tiny_dataset_dir: Path, tiny_features_dir: Path, embedding_cache_dir: Path, tmp_path: Path
) -> None:
    """An item without text (has_text=0, zero vector) and a user without interactions."""
    data = Path(shutil.copytree(tiny_dataset_dir, tmp_path / "data"))
    items = pd.read_parquet(data / schema.ITEMS_FILE)
    blank = {c: [None] for c in items.columns} | {schema.ITEM_ID: ["i_blank"]}
    items = pd.concat([items, pd.DataFrame(blank).astype(items.dtypes.to_dict())])
    items.to_parquet(data / schema.ITEMS_FILE, index=False)
    users = pd.read_parquet(data / schema.USERS_FILE)
    lonely = {c: [None] for c in users.columns} | {schema.USER_ID: ["u_lonely"]}
    users = pd.concat([users, pd.DataFrame(lonely)])
    users.to_parquet(data / schema.USERS_FILE, index=False)
    repo = copy_feature_repo(tmp_path / "repo")
    # tiny_features_dir filled the cache: only the blank item is new, and blanks aren't encoded
    summary = features.build_features(data, repo / "data", cache_dir=embedding_cache_dir)
    assert summary["items_without_text"] == 1 and summary["texts_encoded"] == 0
    store = features.materialize_repo(repo, fs_yaml=repo / "feature_store.yaml")
    got = store.get_online_features(
        features=store.get_feature_service(schema.FEATURE_SERVICE),
        entity_rows=[{schema.USER_ID: "u_lonely", schema.ITEM_ID: "i_blank"}],
    ).to_dict()
    assert got[schema.HAS_TEXT] == [0] and got[schema.INTERACTION_COUNT] == [0]
    assert np.count_nonzero(got[schema.CONTENT_VEC][0]) == 0
    assert len(got[schema.CONTENT_VEC][0]) == 384
    assert got[schema.HISTORY_LEN] == [0] and not got[schema.HISTORY][0]
    assert got[schema.FIRST_SEEN] == [None] or pd.isna(got[schema.FIRST_SEEN][0])
    assert assert_online_equals_offline(store, repo / "data") is None
