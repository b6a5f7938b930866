"""Feedback -> the user's history in the online store (serving.histories, issue 15).

Unit: ``merge_history`` puts live events where the offline path
(``training.features.user_histories``) puts them, checked against it on random splits of
random interaction logs. Integration, on a real server (in process, real gRPC, real Feast
SQLite store copied per module, real ONNX Runtime, SQLite event log): a click reaches the
user's row before the Feedback call returns and changes the next Rank; a user unknown
until then gets a history; and the offline path over the exported events
(``events_cli export`` -> ``training.data --data shop --data export`` ->
``training.features``) writes the same histories as the live path did.

    pytest tests/test_live_histories.py
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import schema
from serving.api.tailrank.v1 import ranking_pb2
from serving.eventlog import FeedbackRow
from serving.features import FeatureClient
from serving.histories import (
    APPLIED,
    DUPLICATE,
    TOO_OLD,
    LiveHistories,
    epoch_ms,
    merge_history,
)
from tests.fixtures.serving import serving_config, started_server
from training import data as data_cli
from training import features


# --- unit: the order rules ---------------------------------------------------------------
def offline(events: list[tuple[int, str]], limit: int) -> tuple[list[str], list[int]]:
    """What training.features writes for one user's (ms, item) interactions."""
    frame = pd.DataFrame(
        {
            schema.USER_ID: "u",
            schema.ITEM_ID: [item for _, item in events],
            schema.TIMESTAMP: pd.to_datetime([ms for ms, _ in events], unit="ms", utc=True),
        }
    )
    row = features.user_histories(frame, limit).loc["u"]
    return list(row[schema.HISTORY]), list(row[schema.HISTORY_TS])


@pytest.mark.parametrize("seed", range(40))
def test_live_inserts_match_the_offline_histories(seed: int) -> None:
    """Any split of a log into "materialized" + "live, in any arrival order" gives the
    offline path's history of the whole log (distinct (time, item) pairs, ties on time)."""
    rng = np.random.default_rng(seed)
    n, limit = int(rng.integers(1, 40)), int(rng.integers(1, 12))
    pairs = {(int(rng.integers(0, 30)) * 1000, f"i{rng.integers(0, 15):02d}") for _ in range(n)}
    log = list(pairs)
    rng.shuffle(log)
    cut = int(rng.integers(0, len(log) + 1))
    held, held_ts = offline(log[:cut], limit) if cut else ([], [])
    live = log[cut:]
    batches = np.array_split(np.arange(len(live)), int(rng.integers(1, 4)))
    for batch in batches:  # several Feedback calls, each a batch in arrival order
        held, held_ts, _ = merge_history(held, held_ts, [live[i] for i in batch], limit)
    assert (held, held_ts) == offline(log, limit)


def test_outcomes_duplicates_too_old_and_the_bound() -> None:
    history, times = ["a", "b", "c"], [10, 20, 30]
    got = merge_history(history, times, [(20, "b"), (5, "z"), (25, "x"), (40, "d")], limit=3)
    assert got[0] == ["x", "c", "d"] and got[1] == [25, 30, 40]
    assert got[2] == {APPLIED: 2, DUPLICATE: 1, TOO_OLD: 1}
    # not full yet: an old event goes first instead of being dropped
    assert merge_history(["a"], [10], [(5, "z")], limit=3)[0] == ["z", "a"]
    # a row without times (written before history_ts): live events go after what it holds
    assert merge_history(["b", "a"], [], [(1, "c")], limit=5)[:2] == (["b", "a", "c"], [-1, -1, 1])


def test_epoch_ms_floors_like_the_offline_path() -> None:
    when = datetime(2026, 12, 2, 10, 0, 0, 123_999, tzinfo=UTC)
    assert epoch_ms(when) == int(features.epoch_ms(pd.Series([pd.Timestamp(when)]))[0])
    assert epoch_ms(when) % 1000 == 123


# --- every online store: the read-modify-write through Feast ----------------------------
def check_live_round_trip(features: FeatureClient, user: str) -> None:
    """LiveHistories over ``features``' store (tests/test_feast_store.py runs it on
    PostgreSQL, tests/test_feast_redis.py on Redis): ``user`` (held by the store) gets two
    events in order, once; a new user gets a row; the write is read back as written."""
    live = LiveHistories(features, limit=50)
    (before,) = features.user_rows([user])
    assert before is not None and len(before.times) == len(before.history)
    now = int(datetime.now(UTC).timestamp() * 1000)
    start = datetime.fromtimestamp(now / 1000, UTC)
    events = [
        FeedbackRow(user, "live-b", "click", start, None),
        FeedbackRow(user, "live-a", "cart", start, None),  # same ms: ordered by item id
        FeedbackRow("live-new-user", "live-a", "purchase", start, None),
    ]
    assert live.apply(events) == {APPLIED: 3}
    assert live.apply(events[:1]) == {DUPLICATE: 1}
    got, new = features.user_rows([user, "live-new-user"])
    assert got.history == [*before.history, "live-a", "live-b"][-50:]
    assert got.times[-2:] == [now, now] and got.attributes == before.attributes
    assert new.history == ["live-a"] and new.times == [now] and new.attributes == "{}"


# --- integration: a real server --------------------------------------------------------
@pytest.fixture(scope="module")
def live(writable_feature_repo: Path, tiny_model_dir: Path, tmp_path_factory):
    """A server with an event log over its own copy of the tiny store (it writes to it)."""
    tmp = tmp_path_factory.mktemp("live")
    repo = writable_feature_repo
    url = f"sqlite:///{tmp / 'events.db'}"
    config = serving_config(repo, tiny_model_dir, event_log_url=url)
    with started_server(config) as (stub, servicer):
        yield stub, servicer, url, tmp
        servicer.event_log.close()


def feedback(stub, events: list[tuple[str, str, int]]) -> int:
    request = ranking_pb2.FeedbackRequest(
        events=[
            ranking_pb2.FeedbackEvent(user_id=u, item_id=i, event_type="click", timestamp_ms=ms)
            for u, i, ms in events
        ]
    )
    return stub.Feedback(request, timeout=10).accepted


def rank(stub, user: str, candidates: list[str]) -> ranking_pb2.RankResponse:
    request = ranking_pb2.RankRequest(user_id=user, candidate_ids=candidates, top_k=0)
    return stub.Rank(request, timeout=10)


def probs(reply: ranking_pb2.RankResponse) -> dict[str, float]:
    return {item.item_id: item.click_probability for item in reply.items}


def test_a_click_is_in_the_history_when_feedback_returns(live, tiny_dataset_dir: Path) -> None:
    stub, servicer, _, _ = live
    users = pd.read_parquet(tiny_dataset_dir / "users.parquet")[schema.USER_ID].tolist()
    items = sorted(pd.read_parquet(tiny_dataset_dir / "items.parquet")[schema.ITEM_ID])
    user = users[0]
    (before,) = servicer.features.user_rows([user])
    candidates = items[:20]
    reply_before = rank(stub, user, candidates)
    now = int(datetime.now(UTC).timestamp() * 1000)
    clicked = [i for i in items if i not in before.history[-3:]][:3]
    assert feedback(stub, [(user, clicked[0], now), (user, clicked[1], now + 1)]) == 2
    (after,) = servicer.features.user_rows([user])
    assert after.history[-2:] == clicked[:2] and after.times[-2:] == [now, now + 1]
    assert after.history[:-2] == before.history[-len(after.history) + 2 :]
    assert after.attributes == before.attributes
    # a late event (older than the last two) goes where the offline order puts it
    assert feedback(stub, [(user, clicked[2], now - 5)]) == 1
    (late,) = servicer.features.user_rows([user])
    assert late.history[-3:] == [clicked[2], *clicked[:2]]
    # the next Rank attends over the new history: the same candidates score differently
    reply_after = rank(stub, user, candidates)
    assert not reply_after.cold_user
    assert probs(reply_after) != probs(reply_before)


def test_an_unknown_user_gets_a_history_and_is_no_longer_cold(live, tiny_dataset_dir) -> None:
    stub, servicer, _, _ = live
    items = sorted(pd.read_parquet(tiny_dataset_dir / "items.parquet")[schema.ITEM_ID])
    user = "live-newcomer-1"
    assert servicer.features.user_rows([user]) == [None]
    assert rank(stub, user, items[:5]).cold_user
    assert feedback(stub, [(user, items[7], 0)]) == 1  # 0 ms: now
    (row,) = servicer.features.user_rows([user])
    assert row.history == [items[7]] and row.attributes == "{}"
    assert not rank(stub, user, items[:5]).cold_user


def test_the_offline_path_rebuilds_the_same_histories(live, tiny_dataset_dir, tmp_path) -> None:
    """events_cli export -> training.data (shop + export) -> training.features: the rows of
    every user the live path touched equal what the live path wrote."""
    from serving.events_cli import main as events_main

    stub, servicer, url, _ = live
    items = sorted(pd.read_parquet(tiny_dataset_dir / "items.parquet")[schema.ITEM_ID])
    users = pd.read_parquet(tiny_dataset_dir / "users.parquet")[schema.USER_ID].tolist()
    now = int(datetime.now(UTC).timestamp() * 1000)
    feedback(
        stub,
        [(users[1], items[3], now), (users[2], items[4], now), ("live-newcomer-2", items[5], now)],
    )
    assert events_main(["export", "--url", url, "--out", str(tmp_path / "export")]) == 0
    combined = tmp_path / "combined"
    argv = [
        "--data",
        str(tiny_dataset_dir),
        "--data",
        str(tmp_path / "export"),
        "--out",
        str(combined),
    ]
    data_cli.run(data_cli.parse_args(argv))
    features.build_features(combined, tmp_path / "features", cache_dir=tmp_path / "cache")
    rebuilt = pd.read_parquet(tmp_path / "features" / schema.USER_FEATURES_FILE).set_index(
        schema.USER_ID
    )
    exported = pd.read_parquet(tmp_path / "export" / "interactions.parquet")
    touched = sorted(set(exported[schema.USER_ID]))
    assert {users[1], users[2], "live-newcomer-1", "live-newcomer-2"} <= set(touched)
    for user, row in zip(touched, servicer.features.user_rows(touched), strict=True):
        assert row is not None
        assert row.history == list(rebuilt.loc[user, schema.HISTORY]), user
        assert row.times == list(rebuilt.loc[user, schema.HISTORY_TS]), user
