"""UpsertItems (issue 15): a new product rankable from its text, without retraining.

A real server (in process, real gRPC, ONNX Runtime for the model and for the sentence
encoder, the module's own copy of the tiny Feast SQLite store, a SQLite event log): a new
item is scored by the next Rank as a cold tail item; a changed text re-embeds an item and
keeps its counts; bad input is INVALID_ARGUMENT naming the field and writes nothing; and
the offline path over the export (``events_cli export`` -> ``training.data --data shop
--data export`` -> ``training.features``) embeds the upserted items to the same rows.

    pytest tests/test_upsert_items.py
"""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

from core import schema
from serving.api.tailrank.v1 import ranking_pb2
from tests.fixtures.serving import served, serving_config
from training import data as data_cli
from training import features

pytestmark = pytest.mark.integration
TIMEOUT = 30.0
NEW = {"title": "Fjell waterproof hiking boots", "brand": "Fjell", "category": "outdoor",
       "description": "Sturdy boots for wet trails."}  # fmt: skip


@pytest.fixture(scope="module")
def upserting(writable_feature_repo: Path, tiny_model_dir: Path, tmp_path_factory):
    """(stub, servicer, event-log url, port) of a server with an event log."""
    url = f"sqlite:///{tmp_path_factory.mktemp('upsert') / 'events.db'}"
    config = serving_config(writable_feature_repo, tiny_model_dir, event_log_url=url)
    with served(config) as (stub, servicer, port):
        yield stub, servicer, url, port


def upsert(stub, *items: ranking_pb2.ItemUpsert) -> ranking_pb2.UpsertItemsResponse:
    return stub.UpsertItems(ranking_pb2.UpsertItemsRequest(items=list(items)), timeout=TIMEOUT)


def item(item_id: str, text: dict, numeric: dict | None = None) -> ranking_pb2.ItemUpsert:
    return ranking_pb2.ItemUpsert(item_id=item_id, text=text, numeric=numeric or {})


def catalogue(tiny_dataset_dir: Path) -> list[str]:
    return sorted(pd.read_parquet(tiny_dataset_dir / "items.parquet")[schema.ITEM_ID])


def test_a_new_item_is_ranked_from_its_text(upserting, tiny_dataset_dir: Path) -> None:
    stub, servicer, _, _ = upserting
    candidates = [*catalogue(tiny_dataset_dir)[:9], "new-boots"]
    before = stub.Rank(
        ranking_pb2.RankRequest(user_id="u0001", candidate_ids=candidates), timeout=TIMEOUT
    )
    assert [u.item_id for u in before.unscored] == ["new-boots"]
    reply = upsert(stub, item("new-boots", NEW, {"price": 89.5}))
    assert (reply.upserted, reply.created, reply.updated) == (1, 1, 0)
    after = stub.Rank(
        ranking_pb2.RankRequest(user_id="u0001", candidate_ids=candidates), timeout=TIMEOUT
    )
    assert not after.unscored
    ranked = {r.item_id: r for r in after.items}
    assert ranked["new-boots"].is_tail and 0 < ranked["new-boots"].click_probability < 1
    # the stored row: the content vector of its text, count 0, tail, has_text
    (stats,) = servicer.features.item_stats(["new-boots"])
    assert stats[schema.INTERACTION_COUNT] == 0 and stats[schema.IS_TAIL] == 1
    rows = servicer.features.fetch_items(["new-boots"])
    assert rows.known[0] and math.isclose(float(np.linalg.norm(rows.content[0])), 1, rel_tol=1e-4)
    # served from this process's table overlay: its content, and no other item's ID row
    served, _ = servicer.features.items(["new-boots"], servicer.model.item_index)
    assert served.vocab_idx[0] == 0 and np.allclose(served.content[0], rows.content[0])


def test_a_changed_text_is_embedded_again_and_counts_kept(upserting, tiny_dataset_dir) -> None:
    stub, servicer, _, _ = upserting
    target = catalogue(tiny_dataset_dir)[0]
    (old_stats,) = servicer.features.item_stats([target])
    old = servicer.features.fetch_items([target]).content[0].copy()
    reply = upsert(stub, item(target, {"title": "Completely different: a red kayak paddle"}))
    assert (reply.created, reply.updated) == (0, 1)
    new = servicer.features.fetch_items([target]).content[0]
    assert float(old @ new) < 0.99  # a different text, a different vector
    assert servicer.features.item_stats([target]) == [old_stats]
    # this process serves the new vector at once (its table holds the old row)
    rows, _ = servicer.features.items([target])
    assert np.allclose(rows.content[0], new)


GOOD = item("never-written", NEW)  # first in every bad call: must not be written either


@pytest.mark.parametrize(
    ("items", "field"),
    [
        ([], "items is empty"),
        ([GOOD, item("", NEW)], "items[1].item_id"),
        ([GOOD, item("a\x00b", NEW)], "items[1].item_id"),
        ([GOOD, item("x" * 300, NEW)], "items[1].item_id"),
        ([GOOD, item("dup", NEW), item("dup", NEW)], "items[2].item_id"),
        ([GOOD, item("x", {**NEW, "colour": "red"})], "items[1].text['colour']"),
        ([GOOD, item("x", NEW, {"price": float("nan")})], "items[1].numeric['price']"),
        ([GOOD, item("x", NEW, {"weight": 1.0})], "items[1].numeric['weight']"),
        ([GOOD, item("x", {"title": "  "})], "items[1].text"),
        ([GOOD, item("x", {"title": "x" * 9000})], "items[1].text['title']"),
        ([GOOD, *(item(f"bulk-{i}", NEW) for i in range(1000))], "more than 1000"),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(upserting, items, field) -> None:
    stub, servicer, _, _ = upserting
    with pytest.raises(grpc.RpcError) as err:
        upsert(stub, *items)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details(), err.value.details()
    assert servicer.features.item_stats(["never-written"]) == [None]  # all or nothing


def test_the_offline_path_embeds_upserted_items_the_same(upserting, tiny_dataset_dir, tmp_path):
    """events_cli export carries the upserted fields; training.data (shop + export) and
    training.features then write, for each upserted item, the vector the live path wrote."""
    from serving.events_cli import main as events_main

    stub, servicer, url, _ = upserting
    user = "u0002"
    fb = ranking_pb2.FeedbackEvent(user_id=user, item_id="new-boots", event_type="click")
    stub.Feedback(ranking_pb2.FeedbackRequest(events=[fb]), timeout=TIMEOUT)  # export needs one
    upsert(stub, item("new-tent", {"title": "Two-person tent", "category": "outdoor"}))
    assert events_main(["export", "--url", url, "--out", str(tmp_path / "export")]) == 0
    exported = pd.read_parquet(tmp_path / "export" / schema.ITEMS_FILE).set_index(schema.ITEM_ID)
    assert exported.loc["new-boots", "title"] == NEW["title"]
    assert exported.loc["new-boots", "price"] == 89.5
    combined = tmp_path / "combined"
    argv = ["--data", str(tiny_dataset_dir), "--data", str(tmp_path / "export"),
            "--out", str(combined)]  # fmt: skip
    data_cli.run(data_cli.parse_args(argv))
    features.build_features(combined, tmp_path / "features", cache_dir=tmp_path / "cache")
    rebuilt = pd.read_parquet(tmp_path / "features" / schema.ITEM_FEATURES_FILE)
    rebuilt = rebuilt.set_index(schema.ITEM_ID)
    upserted = ["new-boots", "new-tent", catalogue(tiny_dataset_dir)[0]]
    live = servicer.features.fetch_items(upserted)
    for k, item_id in enumerate(upserted):
        offline = np.asarray(rebuilt.loc[item_id, schema.CONTENT_VEC], np.float32)
        assert float(offline @ live.content[k]) > 0.9999, item_id
        assert rebuilt.loc[item_id, schema.HAS_TEXT] == 1
    assert rebuilt.loc["new-tent", schema.INTERACTION_COUNT] == 0
    assert rebuilt.loc["new-tent", schema.IS_TAIL] == 1


def test_client_cli_upserts_a_csv_in_batches(upserting, tmp_path: Path, capsys) -> None:
    """``python -m serving.client upsert``: text and number columns from a CSV; a refused
    batch stops the run and says which items were written and which were not."""
    from serving import client

    _, servicer, _, port = upserting
    good = tmp_path / "items.csv"
    good.write_text(
        "item_id,title,category,price\ncli-1,Trail running shoes,outdoor,120\n"
        "cli-2,Camping stove,,35.5\n"
    )
    target = ["--target", f"127.0.0.1:{port}"]
    assert client.main(["upsert", *target, str(good)]) == 0
    assert "upserted 2 items (2 created, 0 updated)" in capsys.readouterr().out
    assert all(s is not None for s in servicer.features.item_stats(["cli-1", "cli-2"]))
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,title,colour\ncli-3,Tent,\ncli-4,Lamp,red\n")
    assert client.main(["upsert", *target, "--batch", "1", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "items 1-1 not written" in err and "text['colour']" in err
    assert "items 0-0 were (1 created" in err
    assert servicer.features.item_stats(["cli-4"]) == [None]
