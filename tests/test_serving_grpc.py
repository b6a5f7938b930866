"""Integration tests of the ranking server through a real gRPC channel.

The server runs over a real Feast repo (applied + materialized in tmp) and the real
exported ONNX model (fixtures ``tiny_feature_repo``, ``tiny_model_dir``).

    pytest tests/test_serving_grpc.py
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from core import schema
from serving.api.tailrank.v1 import ranking_pb2, ranking_pb2_grpc

pytestmark = pytest.mark.integration
TIMEOUT = 10.0


def _latest(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    return frame.sort_values(schema.EVENT_TIMESTAMP).groupby(key).tail(1).set_index(key)


@pytest.fixture(scope="module")
def offline(tiny_features_dir: Path, tiny_model_dir: Path) -> dict:
    """Feature tables and vocab read straight from the files, not through the server."""
    manifest = json.loads((Path(tiny_model_dir) / "manifest.json").read_text())
    vocab = json.loads(
        (Path(tiny_model_dir) / manifest.get("vocab_file", "vocab.json")).read_text()
    )
    items = _latest(pd.read_parquet(Path(tiny_features_dir) / schema.ITEM_FEATURES_FILE), "item_id")
    users = _latest(pd.read_parquet(Path(tiny_features_dir) / schema.USER_FEATURES_FILE), "user_id")
    users = users[users[schema.HISTORY].map(len) > 0]
    return {"manifest": manifest, "vocab": vocab, "items": items, "users": users}


def offline_probs(offline: dict, model_dir: Path, user: str, cands: list[str]) -> np.ndarray:
    """The model's click probabilities computed with onnxruntime directly on the features."""
    man, items = offline["manifest"], offline["items"]
    item_ix = {i: k + 1 for k, i in enumerate(offline["vocab"]["items"])}
    user_ix = {u: k + 1 for k, u in enumerate(offline["vocab"]["users"])}
    hist = list(offline["users"].loc[user, schema.HISTORY])[-int(man["history_len"]) :]
    vec = lambda ids: np.stack([np.asarray(items.loc[i, schema.CONTENT_VEC]) for i in ids])  # noqa: E731
    feeds = {
        "user_idx": np.array([user_ix.get(user, 0)], np.int64),
        "hist_idx": np.array([[item_ix.get(h, 0) for h in hist]], np.int64),
        "hist_content": vec(hist)[None].astype(np.float32),
        "hist_mask": np.ones((1, len(hist)), np.float32),
        "item_idx": np.array([item_ix.get(c, 0) for c in cands], np.int64),
        "item_content": vec(cands).astype(np.float32),
        "item_count": items.loc[cands, schema.INTERACTION_COUNT].to_numpy(np.float32),
    }
    session = ort.InferenceSession(
        str(Path(model_dir) / man["onnx_file"]), providers=["CPUExecutionProvider"]
    )
    return session.run(["prob"], feeds)[0]


def rank(server, **fields) -> ranking_pb2.RankResponse:
    return server.stub.Rank(ranking_pb2.RankRequest(**fields), timeout=TIMEOUT)


def test_health_serving_for_server_and_service(ranking_server) -> None:
    stub = health_pb2_grpc.HealthStub(ranking_server.channel)
    for service in ("", "tailrank.v1.RankingService"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_ranking_service(ranking_server) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(ranking_server.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=TIMEOUT)))
    names = {s.name for s in reply.list_services_response.service}
    assert {"tailrank.v1.RankingService", "grpc.health.v1.Health"} <= names


def test_order_matches_offline_model_scores(ranking_server, offline) -> None:
    user = str(offline["users"].index[0])
    cands = [str(i) for i in offline["items"].index[:15]]
    reply = rank(ranking_server, user_id=user, candidate_ids=cands, tail_weight=0.0)
    expected = offline_probs(offline, ranking_server.model_dir, user, cands)
    got = {i.item_id: i.click_probability for i in reply.items}
    assert not reply.cold_user and not reply.unscored
    np.testing.assert_allclose([got[c] for c in cands], expected, rtol=1e-4, atol=1e-6)
    best_first = [cands[k] for k in np.lexsort((np.array(cands), -expected))]
    assert [i.item_id for i in reply.items] == best_first
    assert reply.model_version == offline["manifest"]["model_version"]


def test_full_tail_weight_puts_tail_items_first(ranking_server, offline) -> None:
    user = str(offline["users"].index[0])
    cands = [str(i) for i in offline["items"].index[:15]]
    tail = offline["items"].loc[cands, schema.IS_TAIL].astype(bool)
    assert 0 < tail.sum() < len(cands), "tiny data needs head and tail candidates"
    reply = rank(ranking_server, user_id=user, candidate_ids=cands, tail_weight=1.0, top_k=4)
    flags = [i.is_tail for i in reply.items]
    assert flags == [bool(tail[i.item_id]) for i in reply.items]
    assert flags == sorted(flags, reverse=True) and len(reply.items) == 4
    assert reply.tail_weight == pytest.approx(1.0)


def test_unknown_user_is_ranked_cold(ranking_server, offline) -> None:
    cands = [str(i) for i in offline["items"].index[:5]]
    reply = rank(ranking_server, user_id="no-such-user", candidate_ids=cands, explain=True)
    assert reply.cold_user
    assert len(reply.items) == 5
    assert all(np.isfinite(i.click_probability) for i in reply.items)
    assert reply.items[0].explanation["p_tail_user"] == pytest.approx(0.5)


def test_explain_names_the_history_items_behind_each_score(ranking_server, offline) -> None:
    """``because``: the model's own attention weights (the ONNX graph's `attention`
    output): at most 3 items of the user's history, heaviest first, each weight in (0, 1],
    and the same weights the graph gives when run directly on the user's features."""
    man = offline["manifest"]
    user = str(offline["users"].index[0])
    hist = list(offline["users"].loc[user, schema.HISTORY])[-int(man["history_len"]) :]
    cands = [str(i) for i in offline["items"].index[:6]]
    reply = rank(ranking_server, user_id=user, candidate_ids=cands, explain=True, top_k=3)
    assert len(reply.items) == 3
    for item in reply.items:
        weights = [b.weight for b in item.because]
        assert 1 <= len(item.because) <= 3 and {b.item_id for b in item.because} <= set(hist)
        assert weights == sorted(weights, reverse=True) and all(0 < w <= 1 for w in weights)
    plain = rank(ranking_server, user_id=user, candidate_ids=cands, top_k=3)
    assert all(not i.because for i in plain.items)  # only when asked
    cold = rank(ranking_server, user_id="no-such-user", candidate_ids=cands, explain=True)
    assert all(not i.because for i in cold.items)  # no history, no influence


def test_unknown_candidate_is_unscored_and_others_ranked(ranking_server, offline) -> None:
    user = str(offline["users"].index[0])
    cands = [str(i) for i in offline["items"].index[:3]] + ["no-such-item"]
    reply = rank(ranking_server, user_id=user, candidate_ids=cands, request_id="req-42")
    assert [(u.item_id, u.reason) for u in reply.unscored] == [
        ("no-such-item", "unknown item: not in the feature store")
    ]
    assert sorted(i.item_id for i in reply.items) == sorted(cands[:3])
    assert reply.request_id == "req-42"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"user_id": "", "candidate_ids": ["a"]}, "user_id is empty"),
        ({"user_id": "u", "candidate_ids": []}, "candidate_ids is empty"),
        ({"user_id": "u", "candidate_ids": [str(i) for i in range(1001)]}, "more than the limit"),
        ({"user_id": "u", "candidate_ids": ["a", "b", "a"]}, "duplicates"),
        ({"user_id": "u", "candidate_ids": ["x" * 257]}, "longer than 256 bytes"),
        ({"user_id": "u" * 300, "candidate_ids": ["a"]}, "longer than 256 bytes"),
        ({"user_id": "u", "candidate_ids": ["a"], "top_k": -1}, "top_k is -1"),
        ({"user_id": "u", "candidate_ids": ["a"], "tail_weight": 1.5}, "in [0, 1]"),
        ({"user_id": "u", "candidate_ids": ["a"], "request_id": "r" * 129}, "128 bytes"),
        (
            {"user_id": "é" * 128 + "x", "candidate_ids": ["a"]},
            "user_id is longer than 256 bytes (257 bytes)",
        ),
        (
            {"user_id": "u", "candidate_ids": ["a", "\U0001f6d2" * 65]},
            "candidate_ids[1] is longer than 256 bytes (260 bytes)",
        ),
        (
            {"user_id": "u", "candidate_ids": ["a"], "request_id": "ü" * 64 + "x"},
            "request_id is longer than 128 bytes (129 bytes)",
        ),
    ],
)
def test_bad_input_is_invalid_argument(ranking_server, fields: dict, message: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        rank(ranking_server, **fields)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("Rank", b"\x0a\x01\xff\x12\x01a"),  # user_id = b"\xff", candidate_ids = ["a"]
        ("Rank", b"\x0a\x01u\x12\x02\xc3\x28"),  # a candidate id that is not UTF-8
        ("Feedback", b"\x0a\x0e\x0a\x02\xed\xa0\x12\x01i\x1a\x05click"),  # a surrogate
        ("UpsertItems", b"\x0a\x03\x0a\x01\xff"),  # items = [ItemUpsert(item_id=b"\xff")]
    ],
)
def test_a_body_that_is_not_utf8_is_invalid_argument(ranking_server, method, body) -> None:
    """Regression (benchmarks.fuzz): gRPC answered INTERNAL ("Exception deserializing
    request!") to a string field that is not UTF-8, which other languages' clients can send."""
    call = ranking_server.channel.unary_unary(f"/tailrank.v1.RankingService/{method}")
    with pytest.raises(grpc.RpcError) as err:
        call(body, timeout=TIMEOUT)  # raw bytes: the Python stubs refuse to build it
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(f"the request is not a valid tailrank.v1.{method}Request")
    assert err.value.details().endswith("string fields must be UTF-8")
    assert rank(ranking_server, user_id="u", candidate_ids=["a"]).request_id  # still serving


def test_feedback_without_event_log_is_failed_precondition(ranking_server) -> None:
    event = ranking_pb2.FeedbackEvent(user_id="u", item_id="i", event_type="click")
    with pytest.raises(grpc.RpcError) as err:
        ranking_server.stub.Feedback(ranking_pb2.FeedbackRequest(events=[event]), timeout=TIMEOUT)
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "event log disabled" in err.value.details()


def test_store_down_is_unavailable_then_recovers(ranking_server, offline) -> None:
    path = ranking_server.servicer.features.sqlite_path
    assert path is not None and path.is_file()
    user = str(offline["users"].index[0])
    cands = [str(i) for i in offline["items"].index[:3]]
    moved = path.with_name(path.name + ".away")
    shutil.move(path, moved)
    try:
        with pytest.raises(grpc.RpcError) as err:
            rank(ranking_server, user_id=user, candidate_ids=cands)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "feast materialize" in err.value.details()
        assert not path.exists(), "the server must not create an empty online store"
    finally:
        shutil.move(moved, path)
    assert len(rank(ranking_server, user_id=user, candidate_ids=cands).items) == 3


def test_cache_refresh_swaps_in_a_full_table(
    tiny_feature_repo: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A row changed in the online store (Feast's public write path) is served from the
    cache only after a refresh: the old value before, the new one after. A second server
    over a copy of the repo, so the shared one keeps its data."""
    from feast import FeatureStore

    from serving.__main__ import build_servicer
    from serving.server import create_server
    from tests.fixtures.serving import serving_config

    repo = Path(shutil.copytree(tiny_feature_repo, tmp_path / "repo"))
    items = _latest(pd.read_parquet(repo / "data" / schema.ITEM_FEATURES_FILE), schema.ITEM_ID)
    item = str(items.index[0])
    was_tail = bool(items.loc[item, schema.IS_TAIL])
    config = serving_config(repo, tiny_model_dir)
    servicer = build_servicer(config)
    servicer.start()
    server, port = create_server(config, servicer)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = ranking_pb2_grpc.RankingServiceStub(channel)

    def served_is_tail() -> bool:
        request = ranking_pb2.RankRequest(user_id="u", candidate_ids=[item], tail_weight=0.0)
        return stub.Rank(request, timeout=TIMEOUT).items[0].is_tail

    try:
        size = servicer.features.cache_size
        assert size == len(items) and served_is_tail() is was_tail
        row = items.loc[[item]].reset_index()
        row[schema.IS_TAIL] = int(not was_tail)
        row[schema.INTERACTION_COUNT] = 12345
        row[schema.EVENT_TIMESTAMP] = pd.Timestamp.now(tz="UTC")
        FeatureStore(repo_path=str(repo)).write_to_online_store(schema.ITEM_VIEW, row)
        assert servicer.features.fetch_items([item]).count.tolist() == [12345]  # Feast has it
        assert served_is_tail() is was_tail  # the cache still serves the old row
        assert servicer.refresh_cache()
        assert served_is_tail() is not was_tail
        rows, fetched = servicer.features.items([item])
        assert fetched == 0 and rows.count.tolist() == [12345]  # from the new table, not Feast
        assert servicer.features.cache_size == size  # every item again, not just the changed one
    finally:
        channel.close()
        servicer.shutting_down()
        server.stop(0).wait()


def test_limits_exactly_at_them_are_served(ranking_server, offline) -> None:
    """1000 candidates (the default max_candidates), 256-byte ids in 2-byte characters and
    a 128-byte request id: all accepted; ids the store does not know come back unscored."""
    known = [str(i) for i in offline["items"].index[:3]]
    long_item, long_user, request_id = "é" * 128, "ü" * 128, "ü" * 64
    cands = known + [f"new-{i}" for i in range(996)] + [long_item]
    assert len(cands) == 1000 and len(long_item.encode()) == 256 == len(long_user.encode())
    reply = rank(ranking_server, user_id=long_user, candidate_ids=cands, request_id=request_id,
                 tail_weight=1.0)  # fmt: skip
    assert reply.cold_user and reply.request_id == request_id and reply.tail_weight == 1.0
    assert sorted(i.item_id for i in reply.items) == sorted(known)
    assert len(reply.unscored) == 997 and reply.unscored[-1].item_id == long_item


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
    return {name: float(value) for name, value in pairs}


def test_metrics_count_the_calls(ranking_server, offline) -> None:
    ok = 'tailrank_requests_total{code="OK",method="Rank"}'
    bad = 'tailrank_errors_total{code="INVALID_ARGUMENT",method="Rank"}'
    before = _scrape(ranking_server.metrics_port)
    user = str(offline["users"].index[0])
    cands = [str(i) for i in offline["items"].index[:4]]
    for _ in range(3):
        rank(ranking_server, user_id=user, candidate_ids=cands)
    with pytest.raises(grpc.RpcError):
        rank(ranking_server, user_id="", candidate_ids=cands)
    after = _scrape(ranking_server.metrics_port)
    assert after[ok] - before.get(ok, 0.0) == 3
    assert after[bad] - before.get(bad, 0.0) == 1
    assert after["tailrank_item_cache_hits_total"] > before.get("tailrank_item_cache_hits_total", 0)
    assert any(k.startswith("tailrank_model_info{") for k in after)


def test_unreachable_postgres_online_store_is_unavailable(ranking_server, tmp_path) -> None:
    from serving.errors import Unavailable
    from serving.features import FeatureClient

    yaml = tmp_path / "feature_store.yaml"
    yaml.write_text(
        "project: tailrank\nregistry: data/registry.db\nprovider: local\n"
        "online_store:\n  type: postgres\n  host: 127.0.0.1\n  port: 1\n"
        "  database: none\n  user: nobody\n  password: ''\n"
        "entity_key_serialization_version: 3\n"
    )
    client = FeatureClient(ranking_server.repo, ranking_server.servicer.model.content_dim,
                           fs_yaml=yaml)  # fmt: skip
    with pytest.raises(Unavailable, match="feature store unavailable"):
        client.user_history("anyone")
