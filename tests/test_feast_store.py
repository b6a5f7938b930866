"""The Feast repository end to end: apply + materialize, then online reads equal the Parquet.

Once on the default SQLite store (``tiny_feature_repo``) and once on the real PostgreSQL
at 127.0.0.1:5432 (online store + SQL registry, a fresh database per session), selected
by configuration alone. Also: an unreachable PostgreSQL is a clear error, nothing written;
each data set gets its own store (``training.feast_repo``, what ``make materialize``
runs); the server's client re-reads a SQLite file replaced under it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from feast import FeatureStore

from core import schema
from serving.features import FeatureClient
from tests.fixtures.features import POSTGRES_YAML, copy_feature_repo
from training import feast_repo, features

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
    feast_repo.materialize_repo(repo)
    store = FeatureStore(repo_path=str(repo))
    assert store.config.online_store.type == "postgres"
    assert_online_equals_offline(store, repo / "data")
    # nothing went to the SQLite defaults; registry and online tables are in PostgreSQL
    assert sorted(p.name for p in (repo / "data").iterdir()) == sorted(
        [schema.ITEM_FEATURES_FILE, schema.USER_FEATURES_FILE, schema.FEATURES_SUMMARY_FILE]
    )
    engine = sa.create_engine(str(postgres_database["url"]))
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"feature_views", "entities", "feature_services"} <= tables
    assert {f"tailrank_{schema.USER_VIEW}", f"tailrank_{schema.ITEM_VIEW}"} <= tables
    # the live path (Feedback -> history) reads and writes user rows on PostgreSQL too
    from serving.features import FeatureClient
    from tests.test_live_histories import check_live_round_trip

    users = pd.read_parquet(repo / "data" / schema.USER_FEATURES_FILE)
    user = str(users[users[schema.HISTORY].map(len) > 0][schema.USER_ID].iloc[0])
    check_live_round_trip(FeatureClient(repo, 384), user)


def test_unreachable_postgres_is_a_clear_error(
    tiny_features_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """Port 1: FeatureStoreUnavailableError naming host:port; no registry, no online store."""
    repo = copy_feature_repo(tmp_path / "repo", tiny_features_dir)
    before = sorted(p.name for p in (repo / "data").iterdir())
    nowhere = {"host": "127.0.0.1", "database": "test", "user": "postgres"}
    _pg_env(monkeypatch, repo, nowhere, 1)
    with pytest.raises(feast_repo.FeatureStoreUnavailableError, match=r"127\.0\.0\.1:1/"):
        feast_repo.materialize_repo(repo)
    assert sorted(p.name for p in (repo / "data").iterdir()) == before


def test_unset_postgres_variables_are_named(tiny_features_dir: Path, tmp_path: Path, monkeypatch):
    """Selecting the PostgreSQL yaml without its variables names the missing ones."""
    repo = copy_feature_repo(tmp_path / "repo", tiny_features_dir)
    for name in ("TAILRANK_PG_HOST", "TAILRANK_PG_PORT", "TAILRANK_PG_DB", "TAILRANK_PG_USER",
                 "TAILRANK_PG_PASSWORD"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(feast_repo.StoreConfigError, match="TAILRANK_PG_HOST"):
        feast_repo.materialize_repo(repo, fs_yaml=repo / POSTGRES_YAML)


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
    store = feast_repo.materialize_repo(repo, repo / "feature_store.yaml", repo / "data")
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


def _other_data_set(features_dir: Path, out: Path, extra_count: int) -> pd.DataFrame:
    """Half the tiny items and users, every item count raised: a data set unlike the first."""
    out.mkdir(parents=True)
    items = pd.read_parquet(features_dir / schema.ITEM_FEATURES_FILE)
    items = items.iloc[: len(items) // 2].copy()
    items[schema.INTERACTION_COUNT] += extra_count
    items.to_parquet(out / schema.ITEM_FEATURES_FILE, index=False)
    users = pd.read_parquet(features_dir / schema.USER_FEATURES_FILE)
    users.iloc[: len(users) // 2].to_parquet(out / schema.USER_FEATURES_FILE, index=False)
    return items


def test_each_data_set_gets_its_own_store(tiny_feature_repo: Path, tmp_path: Path) -> None:
    """`make materialize DATA=b` beside an applied store: b's own config, registry, SQLite
    file and sources; the other store is left as it was."""
    repo = Path(shutil.copytree(tiny_feature_repo, tmp_path / "repo"))
    first = FeatureStore(repo_path=str(repo))
    before = {p.name: p.stat().st_mtime_ns for p in (repo / "data").iterdir() if p.is_file()}
    b_dir = repo / "data" / "shop-b"
    b_items = _other_data_set(repo / "data", b_dir, extra_count=1000)
    fs_yaml = feast_repo.write_dataset_config(repo / "feature_store.yaml", repo, b_dir)
    assert fs_yaml == b_dir / "feature_store.yaml"
    store = feast_repo.materialize_repo(repo, fs_yaml, b_dir)
    assert store.config.project == "tailrank_shop_b"
    assert sorted(p.name for p in b_dir.iterdir()) == sorted(
        [schema.ITEM_FEATURES_FILE, schema.USER_FEATURES_FILE, "feature_store.yaml",
         "registry.db", "online_store.db"]
    )  # fmt: skip
    sources = {s.name: s.path for s in store.list_data_sources()}
    assert sources["item_features_source"] == "data/shop-b/item_features.parquet"
    assert_online_equals_offline(store, b_dir)
    # the first data set's store: same files, untouched, still its own values
    after = {p.name: p.stat().st_mtime_ns for p in (repo / "data").iterdir() if p.is_file()}
    assert after == before
    assert_online_equals_offline(first, repo / "data")
    missing = store.get_online_features(
        [f"{schema.ITEM_VIEW}:{schema.INTERACTION_COUNT}"],
        [{schema.ITEM_ID: str(i)} for i in first_items_not_in(repo / "data", b_items)],
    ).to_dict()
    assert set(missing[schema.INTERACTION_COUNT]) == {None}


def first_items_not_in(data_dir: Path, items: pd.DataFrame) -> list[str]:
    ids = pd.read_parquet(data_dir / schema.ITEM_FEATURES_FILE)[schema.ITEM_ID]
    return [i for i in ids if i not in set(items[schema.ITEM_ID])][:3]


def test_dataset_config_keeps_variables_and_moves_local_files(tmp_path: Path) -> None:
    """The PostgreSQL template: ${VAR}s stay (no password written), nothing local to move;
    the SQLite template: registry and online store files move into the data set's folder."""
    repo = copy_feature_repo(tmp_path / "repo")
    folder = repo / "data" / "My Shop"
    pg = feast_repo.write_dataset_config(repo / POSTGRES_YAML, repo, folder, name="My Shop")
    text = pg.read_text()
    assert '"${TAILRANK_PG_PASSWORD}"' in text and "project: tailrank_my_shop" in text
    env = {"TAILRANK_PG_HOST": "h", "TAILRANK_PG_PORT": "5432", "TAILRANK_PG_DB": "d",
           "TAILRANK_PG_USER": "u", "TAILRANK_PG_PASSWORD": ""}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        config = feast_repo.repo_config(repo, pg)
    assert config.online_store.password == "" and config.online_store.port == 5432
    assert config.registry.path == "postgresql+psycopg://u:@h:5432/d"
    lite = feast_repo.repo_config(
        repo, feast_repo.write_dataset_config(repo / "feature_store.yaml", repo, folder)
    )
    assert lite.project == "tailrank_my_shop"
    assert lite.registry.path == "data/My Shop/registry.db"
    assert lite.online_store.path == "data/My Shop/online_store.db"


@pytest.mark.postgres
def test_postgres_data_set_has_its_own_project(
    postgres_database: dict, tiny_features_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """`make materialize-store STORE=postgres`: the data set's project, tables and sources."""
    repo = copy_feature_repo(tmp_path / "repo")
    folder = repo / "data" / "shop"
    shutil.copytree(tiny_features_dir, folder)
    _pg_env(monkeypatch, repo, postgres_database, int(postgres_database["port"]))
    monkeypatch.delenv("FEAST_FS_YAML_FILE_PATH")  # the generated config is passed as -f
    fs_yaml = feast_repo.write_dataset_config(repo / POSTGRES_YAML, repo, folder)
    store = feast_repo.materialize_repo(repo, fs_yaml, folder)
    assert store.config.project == "tailrank_shop"
    assert_online_equals_offline(store, folder)
    engine = sa.create_engine(str(postgres_database["url"]))
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {f"tailrank_shop_{schema.USER_VIEW}", f"tailrank_shop_{schema.ITEM_VIEW}"} <= tables
    assert not (folder / "registry.db").exists() and not (folder / "online_store.db").exists()


def test_client_rereads_a_replaced_sqlite_file(tiny_feature_repo: Path, tmp_path: Path) -> None:
    """A new online_store.db renamed over the served one is read from the next request on
    (the old connection would go on reading the replaced file)."""
    repo = Path(shutil.copytree(tiny_feature_repo, tmp_path / "repo"))
    items = pd.read_parquet(repo / "data" / schema.ITEM_FEATURES_FILE)
    item, count = str(items[schema.ITEM_ID].iloc[0]), int(items[schema.INTERACTION_COUNT].iloc[0])
    client = FeatureClient(repo, content_dim=384, fs_yaml=repo / "feature_store.yaml")
    assert client.fetch_items([item]).count.tolist() == [count]
    other = Path(shutil.copytree(repo, tmp_path / "other"))
    row = items.iloc[[0]].copy()
    row[schema.INTERACTION_COUNT] = count + 1000
    FeatureStore(repo_path=str(other)).write_to_online_store(schema.ITEM_VIEW, row)
    os.replace(other / "data" / "online_store.db", repo / "data" / "online_store.db")
    assert client.fetch_items([item]).count.tolist() == [count + 1000]
    assert client.user_history("no-such-user") is None  # every read goes to the new file
