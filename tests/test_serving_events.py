"""The server with its event log on: Rank logs impressions, Feedback stores events.

A second real server (port 0) over the tiny Feast repo and model, with the event log on
a SQLite file in tmp; calls go through a real gRPC channel; rows are read back with
SQLAlchemy. Also the client CLI against it.

    pytest tests/test_serving_events.py
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pandas as pd
import pytest
import sqlalchemy as sa

from core import schema
from serving import client
from serving.api.tailrank.v1 import ranking_pb2
from tests.fixtures.serving import served, serving_config

pytestmark = pytest.mark.integration
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def logged_server(writable_feature_repo, tiny_model_dir, tmp_path_factory) -> Iterator[tuple]:
    url = f"sqlite:///{tmp_path_factory.mktemp('events') / 'events.db'}"
    config = serving_config(writable_feature_repo, tiny_model_dir, event_log_url=url)
    with served(config) as (stub, servicer, port):
        yield stub, servicer, url, port


@pytest.fixture(scope="module")
def item_ids(tiny_features_dir: Path) -> list[str]:
    items = pd.read_parquet(Path(tiny_features_dir) / schema.ITEM_FEATURES_FILE)
    return [str(i) for i in items[schema.ITEM_ID].unique()[:6]]


def count(url: str, sql: str, **params: object) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql), params).scalar_one())
    finally:
        engine.dispose()


def test_rank_logs_the_returned_items_as_impressions(logged_server, item_ids) -> None:
    stub, _, url, _ = logged_server
    request = ranking_pb2.RankRequest(
        user_id="anyone", candidate_ids=item_ids, top_k=3, request_id="imp-1"
    )
    reply = stub.Rank(request, timeout=TIMEOUT)
    assert len(reply.items) == 3
    sql = "SELECT COUNT(*) FROM impressions WHERE request_id = :r"
    deadline = time.monotonic() + 10
    while count(url, sql, r="imp-1") < 3 and time.monotonic() < deadline:
        time.sleep(0.1)  # the writer thread batches every 0.2 s
    assert count(url, sql, r="imp-1") == 3
    first = "SELECT COUNT(*) FROM impressions WHERE request_id = 'imp-1' AND position = 1 "
    assert count(url, first + "AND item_id = :i", i=reply.items[0].item_id) == 1


def test_feedback_is_stored_and_bad_feedback_rejected(logged_server, item_ids) -> None:
    stub, _, url, _ = logged_server
    events = [
        ranking_pb2.FeedbackEvent(user_id="anyone", item_id=i, event_type="click")
        for i in item_ids[:2]
    ]
    reply = stub.Feedback(ranking_pb2.FeedbackRequest(events=events), timeout=TIMEOUT)
    assert reply.accepted == 2
    assert count(url, "SELECT COUNT(*) FROM feedback WHERE user_id = 'anyone'") == 2
    bad = ranking_pb2.FeedbackEvent(user_id="anyone", item_id="x", event_type="like")
    with pytest.raises(grpc.RpcError) as err:
        stub.Feedback(ranking_pb2.FeedbackRequest(events=[bad]), timeout=TIMEOUT)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert count(url, "SELECT COUNT(*) FROM feedback WHERE user_id = 'anyone'") == 2


@pytest.mark.parametrize("source", ["--titles", "--repo"])
def test_client_cli_prints_the_ranked_list(
    logged_server, item_ids, tiny_feature_repo, tiny_features_dir, capsys, source: str
):
    port = logged_server[3]
    where = tiny_features_dir if source == "--titles" else tiny_feature_repo
    # a user no Feedback has reached (Feedback gives a user a history: no longer cold)
    argv = ["--target", f"127.0.0.1:{port}", "--user", "never-seen", "--top-k", "2",
            "--candidates", ",".join([*item_ids[:3], "ghost"]), source, str(where),
            "--explain"]  # fmt: skip
    assert client.main(argv) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "(cold user)" in lines[0]
    rows = [line for line in lines[2:] if line.split()[0] in ("1", "2")]
    ranked = [row.split()[1] for row in rows]
    assert len(ranked) == 2 and set(ranked) <= set(item_ids[:3])
    items = pd.read_parquet(tiny_features_dir / schema.ITEM_FEATURES_FILE)
    title = dict(zip(items[schema.ITEM_ID].astype(str), items[schema.TITLE], strict=True))
    for row, item in zip(rows, ranked, strict=True):
        assert title[item] and row.endswith(title[item])  # the item's own title, either way
    assert "unscored: ghost (unknown item: not in the feature store)" in out
    assert "tail_boost=" in out


def test_client_titles_from_a_missing_file_are_empty(tmp_path: Path) -> None:
    assert client.titles_from_file(tmp_path, ["a"]) == {}


def test_client_cli_reports_bad_input(logged_server, capsys) -> None:
    argv = ["--target", f"127.0.0.1:{logged_server[3]}", "--user", "", "--candidates", "a"]
    assert client.main(argv) == 1
    assert "INVALID_ARGUMENT: user_id is empty" in capsys.readouterr().err
