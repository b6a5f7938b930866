"""The item table: every item the store holds is served from it, misses are remembered.

Unit tests of ``serving.itemtable`` (save/open round trip, memory-mapped), then the real
server over a copy of the tiny Feast repo to which items the model never saw were added
(offline source + online store, as a feature run and ``feast materialize`` add them).
Feast item reads are counted by wrapping ``FeatureClient.fetch_items``, the one method
every item read goes through.

    pytest tests/test_serving_itemtable.py
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import schema
from serving.api.tailrank.v1 import ranking_pb2
from serving.errors import ConfigError
from serving.features import MISS_TTL_S
from serving.itemtable import ItemTable, ItemTableError, vocab_digest

NEW_ITEMS = ["new-a", "new-b", "new-c"]


def _table(n: int = 5, dim: int = 4) -> ItemTable:
    rng = np.random.default_rng(0)
    return ItemTable(
        [f"item-{k}" for k in range(n - 1)] + ["ü-ñ"], rng.random((n, dim), dtype=np.float32),
        rng.random(n, dtype=np.float32), rng.random(n) > 0.5, np.arange(n, dtype=np.int64),
        vocab="abc",
    )  # fmt: skip


def test_save_open_round_trip_is_memory_mapped_and_equal(tmp_path: Path) -> None:
    table = _table()
    path = table.save(tmp_path / "items.tbl")
    opened = ItemTable.open(path)
    assert opened.ids == table.ids and opened.vocab == "abc" and opened.row == table.row
    for name in ("content", "count", "is_tail", "vocab_idx"):
        got, want = getattr(opened, name), getattr(table, name)
        assert isinstance(got, np.memmap) and not got.flags.owndata and not got.flags.writeable
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(opened.rows(["item-3", "nope", "ü-ñ"]), [3, -1, 4])


def test_saving_over_an_open_table_leaves_it_intact(tmp_path: Path) -> None:
    path = _table(5).save(tmp_path / "items.tbl")
    old = ItemTable.open(path)
    _table(3).save(path)  # atomic replace: the old mapping keeps the old file
    assert len(old) == 5 and float(old.content.sum()) == pytest.approx(_table(5).content.sum())
    assert len(ItemTable.open(path)) == 3
    assert not list(tmp_path.glob(".items.tbl.*")), "no temporary file left behind"


def test_empty_table_round_trip_and_bad_files(tmp_path: Path) -> None:
    opened = ItemTable.open(ItemTable.empty(8).save(tmp_path / "empty.tbl"))
    assert len(opened) == 0 and opened.dim == 8
    (tmp_path / "junk.tbl").write_bytes(b"not a table")
    with pytest.raises(ItemTableError, match="not an item table"):
        ItemTable.open(tmp_path / "junk.tbl")
    with pytest.raises(ItemTableError, match="disagree"):
        ItemTable(["a"], np.zeros((2, 3), np.float32), np.zeros(1), np.zeros(1, bool),
                  np.zeros(1, np.int64))  # fmt: skip


# --- the real server over a store that holds items the model never saw -------------------
@pytest.fixture(scope="module")
def new_item_server(tiny_feature_repo: Path, tiny_model_dir: Path, tmp_path_factory):
    """The server over a copy of the tiny repo plus NEW_ITEMS (not in the vocabulary)."""
    from feast import FeatureStore

    from serving.__main__ import build_servicer
    from tests.fixtures.serving import serving_config

    repo = Path(shutil.copytree(tiny_feature_repo, tmp_path_factory.mktemp("newitems") / "r"))
    source = repo / "data" / schema.ITEM_FEATURES_FILE
    items = pd.read_parquet(source)
    new = items.iloc[: len(NEW_ITEMS)].copy()
    new[schema.ITEM_ID] = NEW_ITEMS
    pd.concat([items, new], ignore_index=True).to_parquet(source, index=False)
    FeatureStore(repo_path=str(repo)).write_to_online_store(schema.ITEM_VIEW, new)
    servicer = build_servicer(serving_config(repo, tiny_model_dir))
    servicer.start()
    yield servicer


@pytest.fixture
def item_reads(new_item_server) -> Iterator[list[list[str]]]:
    """The ids of every Feast item read the server makes while the test runs."""
    features, reads = new_item_server.features, []
    real = features.fetch_items

    def counting(ids, vocab=None):
        reads.append(list(ids))
        return real(ids, vocab)

    features.fetch_items = counting
    try:
        yield reads
    finally:
        del features.fetch_items  # the class's method again


def _rank(servicer, user: str, cands: list[str]) -> ranking_pb2.RankResponse:
    request = ranking_pb2.RankRequest(user_id=user, candidate_ids=cands, tail_weight=0.0)
    return servicer._rank(request)


def _user(servicer) -> str:
    return next(iter(servicer.model.user_index))  # a user the model and the store know


def test_table_holds_every_stored_item_known_to_the_model_or_not(new_item_server) -> None:
    table, vocab = new_item_server.features.table, new_item_server.model.item_index
    assert set(NEW_ITEMS) <= set(table.ids) and not set(NEW_ITEMS) & set(vocab)
    assert table.vocab == vocab_digest(new_item_server.model.item_ids)
    np.testing.assert_array_equal(table.vocab_idx[table.rows(NEW_ITEMS)], 0)
    known = [i for i in table.ids if i in vocab]
    np.testing.assert_array_equal(table.vocab_idx[table.rows(known)], [vocab[i] for i in known])


def test_new_item_is_scored_from_the_table_with_no_feast_read(new_item_server, item_reads):
    vocab_items = new_item_server.model.item_ids[:5]
    reply = _rank(new_item_server, _user(new_item_server), vocab_items + NEW_ITEMS)
    assert not reply.unscored
    assert {i.item_id for i in reply.items} == set(vocab_items + NEW_ITEMS)
    assert all(np.isfinite(i.click_probability) for i in reply.items)
    assert item_reads == [], "an item the store holds must not be read from Feast per request"


def test_unknown_id_is_read_once_then_remembered(new_item_server, item_reads) -> None:
    features, user = new_item_server.features, _user(new_item_server)
    cands = new_item_server.model.item_ids[:3] + ["no-such-item-x"]
    features.miss_ttl_s = 2.0
    try:
        for _ in range(3):
            reply = _rank(new_item_server, user, cands)
            assert [(u.item_id, u.reason) for u in reply.unscored] == [
                ("no-such-item-x", "unknown item: not in the feature store")
            ]
            assert len(reply.items) == 3
        assert item_reads == [["no-such-item-x"]], "read once within the TTL"
        time.sleep(2.1)  # expired: the next request asks the store again
        _rank(new_item_server, user, cands)
    finally:
        features.miss_ttl_s = MISS_TTL_S
    assert item_reads == [["no-such-item-x"]] * 2


def test_refresh_swaps_the_table_and_a_failed_one_keeps_it(new_item_server) -> None:
    features = new_item_server.features
    before = features.table
    assert new_item_server.refresh_cache()
    assert features.table is not before and features.table.ids == before.ids
    kept = features.table
    path = features.sqlite_path
    moved = path.with_name(path.name + ".away")
    shutil.move(path, moved)
    try:
        assert not new_item_server.refresh_cache()
    finally:
        shutil.move(moved, path)
    assert features.table is kept


def test_a_table_built_for_another_vocabulary_is_refused(new_item_server, tmp_path) -> None:
    features = new_item_server.features
    opened = ItemTable.open(features.table.save(tmp_path / "items.tbl"))
    assert features.use_table(opened, new_item_server.model.item_ids) == len(opened)
    assert features.table is opened  # the opened (memory-mapped) table now serves
    with pytest.raises(ConfigError, match="another model vocabulary"):
        features.use_table(opened, ["x", "y"])
    assert _rank(new_item_server, _user(new_item_server), NEW_ITEMS).items
