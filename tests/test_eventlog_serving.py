"""End to end: Rank and Feedback through a real gRPC channel with the event log on.

A real server (tiny Feast repo, tiny exported model) logs to a real SQLite file and to
real PostgreSQL; after a clean shutdown the rows written equal the responses served,
and the exposure report reads them back.

    pytest tests/test_eventlog_serving.py
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pandas as pd
import pytest
import sqlalchemy as sa

from core import schema
from serving.api.tailrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.eventschema import feedback, impressions, make_engine
from serving.report import Window, build_report

pytestmark = pytest.mark.integration
TIMEOUT = 10.0


@pytest.fixture
def logged_server(
    writable_feature_repo: Path, tiny_model_dir: Path, event_url: str
) -> Iterator[tuple[ranking_pb2_grpc.RankingServiceStub, object]]:
    """A server with its event log on ``event_url``; yields (stub, servicer)."""
    from tests.fixtures.serving import serving_config, started_server

    config = serving_config(writable_feature_repo, tiny_model_dir, event_log_url=event_url)
    with started_server(config) as (stub, servicer):
        try:
            yield stub, servicer
        finally:
            servicer.event_log.close()


def candidates(features_dir: Path, n: int) -> list[str]:
    items = pd.read_parquet(features_dir / schema.ITEM_FEATURES_FILE, columns=[schema.ITEM_ID])
    return sorted(items[schema.ITEM_ID].astype(str).unique())[:n]


def test_rows_written_equal_responses_served(
    logged_server: tuple, tiny_features_dir: Path, event_url: str
) -> None:
    stub, servicer = logged_server
    cands = candidates(Path(tiny_features_dir), 12)
    served = []
    for i in range(15):
        req = ranking_pb2.RankRequest(
            user_id=f"user-{i % 4}", candidate_ids=cands, top_k=5, request_id=f"e2e-{i}"
        )
        served.append(stub.Rank(req, timeout=TIMEOUT))
    bad = ranking_pb2.FeedbackRequest(
        events=[{"user_id": "u", "item_id": "i", "event_type": "click"},
                {"user_id": "u", "item_id": "", "event_type": "click"}]
    )  # fmt: skip
    with pytest.raises(grpc.RpcError) as err:
        stub.Feedback(bad, timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[1].item_id" in err.value.details()
    first = served[0]
    clicked = ranking_pb2.FeedbackEvent(
        user_id="user-0", item_id=first.items[0].item_id, event_type="click",
        request_id=first.request_id,
    )  # fmt: skip
    ok = stub.Feedback(ranking_pb2.FeedbackRequest(events=[clicked]), timeout=TIMEOUT)
    assert ok.accepted == 1
    servicer.event_log.close()  # what SIGTERM does: flush, then stop

    expected = sorted(
        (r.request_id, it.item_id, pos, it.score, r.model_version)
        for r in served
        for pos, it in enumerate(r.items, start=1)
    )
    engine = make_engine(event_url)
    cols = [
        impressions.c[c] for c in ("request_id", "item_id", "position", "score", "model_version")
    ]
    with engine.connect() as conn:
        got = sorted(tuple(row) for row in conn.execute(sa.select(*cols)))
        n_feedback = conn.execute(sa.select(sa.func.count()).select_from(feedback)).scalar_one()
    assert len(got) == 15 * 5 and got == expected
    assert n_feedback == 1
    summary, _, _ = build_report(engine, Window())
    engine.dispose()
    assert summary["impressions"].sum() == 75 and summary["clicks"].sum() == 1
