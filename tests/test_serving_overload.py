"""Overload: the in-flight limit answers RESOURCE_EXHAUSTED, an expired call is not scored.

A real server (tiny Feast repo and model) runs in-process with one worker thread. An
exclusive SQLite lock on the online store holds one Rank call inside the server (its user
lookup waits on the lock), so what comes next arrives while the server is busy: past the
limit it is refused at once; under the limit it waits in the queue past its deadline and
must not be scored (gRPC drops it; the handler refuses a call with almost no time left).

    pytest tests/test_serving_overload.py
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from serving.api.tailrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.server import MIN_TIME_LEFT_S, RankingServicer, create_server
from tests.fixtures.serving import serving_config
from tests.test_eventlog_serving import candidates

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def servicer(tiny_feature_repo: Path, tiny_model_dir: Path) -> Iterator[RankingServicer]:
    from serving.__main__ import build_servicer

    servicer = build_servicer(serving_config(tiny_feature_repo, tiny_model_dir))
    servicer.start()
    yield servicer
    servicer.shutting_down()


@contextmanager
def one_thread_server(servicer: RankingServicer, max_in_flight: int) -> Iterator:
    """A server with 1 worker thread and the given in-flight limit; yields a stub."""
    config = serving_config(
        servicer.config.repo, servicer.config.model, workers=1, max_in_flight=max_in_flight
    )
    server, port = create_server(config, servicer)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield ranking_pb2_grpc.RankingServiceStub(channel)
    finally:
        channel.close()
        server.stop(0).wait()


@contextmanager
def store_locked(repo: Path) -> Iterator[None]:
    """Hold an exclusive lock on the SQLite online store (user lookups wait, 5 s max)."""
    lock = sqlite3.connect(repo / "data" / "online_store.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        lock.execute("ROLLBACK")
        lock.close()


def request(features_dir: Path, user: str) -> ranking_pb2.RankRequest:
    return ranking_pb2.RankRequest(user_id=user, candidate_ids=candidates(features_dir, 5))


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_past_the_in_flight_limit_calls_are_refused_at_once(
    servicer: RankingServicer, tiny_feature_repo: Path, tiny_features_dir: Path
) -> None:
    with one_thread_server(servicer, max_in_flight=1) as stub:
        with store_locked(tiny_feature_repo):
            held = stub.Rank.future(request(tiny_features_dir, "u-held"), timeout=30)
            time.sleep(0.5)  # the held call is in the handler, waiting on the lock
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                stub.Rank(request(tiny_features_dir, "u-refused"), timeout=10)
            refused_in = time.monotonic() - start
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused_in < 1.0, f"refusal took {refused_in:.2f}s: it must not queue"
        assert len(held.result().items) == 5  # the call in flight is not disturbed
        assert len(stub.Rank(request(tiny_features_dir, "u-after"), timeout=10).items) == 5


def test_a_call_whose_deadline_passed_in_the_queue_is_not_scored(
    servicer: RankingServicer, tiny_feature_repo: Path, tiny_features_dir: Path
) -> None:
    scored = "tailrank_candidates_per_request_count"  # observed only when a call is scored
    with one_thread_server(servicer, max_in_flight=4) as stub:
        before = sample(scored)
        with store_locked(tiny_feature_repo):
            held = stub.Rank.future(request(tiny_features_dir, "u-held"), timeout=30)
            time.sleep(0.5)
            late = stub.Rank.future(request(tiny_features_dir, "u-late"), timeout=0.5)
            with pytest.raises(grpc.RpcError) as err:
                late.result()  # waits in the queue behind the held call until too late
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert len(held.result().items) == 5
        time.sleep(0.5)  # the thread is free again: the late call would be scored now
        assert sample(scored) == before + 1  # the held call only


class DeadlineContext:
    """What the Rank handler uses of a grpc.ServicerContext, with a chosen time left."""

    def __init__(self, time_left_s: float) -> None:
        self.time_left_s, self.code, self.details = time_left_s, None, ""

    def time_remaining(self) -> float:
        return self.time_left_s

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


@pytest.mark.parametrize("time_left_s", [0.0, MIN_TIME_LEFT_S / 2])
def test_rank_with_no_time_left_is_answered_without_scoring(
    servicer: RankingServicer, tiny_features_dir: Path, time_left_s: float
) -> None:
    """gRPC drops a call that expired before a thread took it (above); a call that starts
    with less than MIN_TIME_LEFT_S left is refused by the handler itself."""
    expired = ("tailrank_deadline_expired_total", {"method": "Rank"})
    scored = "tailrank_candidates_per_request_count"
    before_expired, before_scored = sample(*expired), sample(scored)
    context = DeadlineContext(time_left_s)
    reply = servicer.Rank(request(tiny_features_dir, "u-late"), context)
    assert context.code == grpc.StatusCode.DEADLINE_EXCEEDED and not reply.items
    assert "not scored" in context.details
    assert sample(*expired) == before_expired + 1 and sample(scored) == before_scored
    ok = DeadlineContext(float("inf"))  # no deadline
    assert len(servicer.Rank(request(tiny_features_dir, "u-ok"), ok).items) == 5
    assert ok.code is None and sample(scored) == before_scored + 1
