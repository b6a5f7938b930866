"""The exposure report and the training-data export on a small hand-made log.

    pytest tests/test_report.py

The log (catalogue of 8 items; a, b head; t1..t4 tail), shown at T0 = 2026-03-01 12:00 UTC:
  v1  r1 (u1): a t1 t2      r2 (u2): a b t1
  v2  r3 (u1): t3 t4
  v1  old (u1): a, a day before the window (excluded)
Feedback: click r1/a and cart r1/a (one clicked impression), u2 click a 10 min later
without request id (-> r2/a), u2 purchase t1 1 h later without request id (-> r2/t1),
u1 click t2 30 h later without request id (outside 24 h: not attributed), click r1/b
(b was not in r1: not attributed).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving import events_cli, report
from serving.eventlog import EventLog, FeedbackRow, Impression
from serving.eventschema import make_engine

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
TAIL = {"t1", "t2", "t3", "t4"}
WINDOW = report.Window(T0 - timedelta(hours=1), T0 + timedelta(hours=1))


def shown(request_id: str, user: str, items: list[str], version: str, at: datetime) -> list:
    return [
        Impression(request_id, user, item, pos, 1.0 - pos / 10, 0.5, item in TAIL, version, at)
        for pos, item in enumerate(items, start=1)
    ]


def fill(url: str) -> None:
    fb = [
        FeedbackRow("u1", "a", "click", T0 + timedelta(minutes=1), "r1"),
        FeedbackRow("u1", "a", "cart", T0 + timedelta(minutes=2), "r1"),
        FeedbackRow("u2", "a", "click", T0 + timedelta(minutes=10), None),
        FeedbackRow("u2", "t1", "purchase", T0 + timedelta(hours=1), None),
        FeedbackRow("u1", "t2", "click", T0 + timedelta(hours=30), None),
        FeedbackRow("u1", "b", "click", T0 + timedelta(minutes=3), "r1"),
    ]
    with EventLog(url) as log:
        log.log_impressions(shown("r1", "u1", ["a", "t1", "t2"], "v1", T0))
        log.log_impressions(shown("r2", "u2", ["a", "b", "t1"], "v1", T0))
        log.log_impressions(shown("r3", "u1", ["t3", "t4"], "v2", T0))
        log.log_impressions(shown("old", "u1", ["a"], "v1", T0 - timedelta(days=1)))
        log.record_feedback(fb)


@pytest.fixture
def filled_url(event_url: str) -> str:
    fill(event_url)
    return event_url


def test_gini_known_values_and_agrees_with_the_mean_difference_definition() -> None:
    assert report.gini(np.array([3, 3, 3, 3])) == 0.0
    assert report.gini(np.array([0, 0, 0, 7])) == pytest.approx(0.75)
    x = np.random.default_rng(0).integers(0, 50, size=200).astype(float)
    # the textbook definition, independent of the sorted-rank formula the code uses
    mean_difference = np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size**2 * x.mean())
    assert report.gini(x) == pytest.approx(mean_difference)


def test_report_figures_on_a_known_log(filled_url: str) -> None:
    engine = make_engine(filled_url)
    summary, by_pos, labelled = report.build_report(engine, WINDOW, catalogue_size=8)
    engine.dispose()
    v1, v2 = (summary.set_index("model_version").loc[v] for v in ("v1", "v2"))
    assert (v1.impressions, v1.requests, v1.distinct_items, v1.clicks) == (6, 2, 4, 3)
    assert v1.tail_share == pytest.approx(0.5)
    # exposure a=2, t1=2, b=1, t2=1 plus four never-shown items: 28 / (8 * 6)
    assert v1.gini == pytest.approx(28 / 48)
    assert v1.coverage == pytest.approx(0.5)
    assert (v1.ctr, v1.ctr_head, v1.ctr_tail) == pytest.approx((0.5, 2 / 3, 1 / 3))
    assert (v2.tail_share, v2.gini, v2.coverage, v2.ctr) == pytest.approx((1.0, 0.75, 0.25, 0))
    assert math.isnan(v2.ctr_head)
    v1_pos = by_pos[by_pos.model_version == "v1"].set_index("position")
    assert v1_pos["ctr"].to_dict() == pytest.approx({1: 1.0, 2: 0.0, 3: 0.5})
    clicked = labelled[labelled.clicked == 1][["request_id", "item_id"]]
    assert sorted(map(tuple, clicked.to_numpy())) == [("r1", "a"), ("r2", "a"), ("r2", "t1")]


def test_report_without_catalogue_and_with_empty_window(filled_url: str) -> None:
    engine = make_engine(filled_url)
    summary, _, _ = report.build_report(engine, report.Window(until=T0))  # only "old"
    assert summary["impressions"].tolist() == [1] and math.isnan(summary["coverage"].iloc[0])
    empty, _, _ = report.build_report(engine, report.Window(since=T0 + timedelta(days=9)))
    engine.dispose()
    assert empty.empty


def test_report_cli_writes_table_csv_and_plots(filled_url: str, tmp_path: Path, capsys) -> None:
    features = tmp_path / "features"
    features.mkdir()
    items = [f"x{i}" for i in range(8)]
    pd.DataFrame({"item_id": items}).to_parquet(features / "item_features.parquet")
    out = tmp_path / "report"
    argv = ["--url", filled_url, "--since", "2026-03-01T11:00", "--until", "2026-03-01T13:00"]
    assert report.main([*argv, "--features", str(features), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "v1" in printed and "v2" in printed and "0.5833" in printed
    table = pd.read_csv(out / "report.csv")
    assert table["impressions"].tolist() == [6, 2]
    assert pd.read_csv(out / "ctr_by_position.csv").shape == (5, 5)
    for png in ("lorenz.png", "ctr_by_position.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.csv", "ctr_by_position.csv", "lorenz.png", "ctr_by_position.png"]
    )
    assert report.main(["--url", filled_url, "--features", str(tmp_path / "none")]) == 2
    assert report.main([*argv[:2], "--since", "2026-03-02", "--until", "2026-03-01"]) == 2
    missing = tmp_path / "no" / "events.db"
    assert report.main(["--url", f"sqlite:///{missing}"]) == 2 and not missing.parent.exists()


def test_unreachable_store_exits_1_naming_it_without_the_password(capsys) -> None:
    """Port 1 refuses at once: exit 1, one error line with host:port, password hidden."""
    url = "postgresql+psycopg://u:s3cret@127.0.0.1:1/events"
    assert report.main(["--url", url]) == 1
    assert events_cli.main(["create", "--url", url]) == 1
    err = capsys.readouterr().err
    named = "error: cannot reach the event store postgresql+psycopg://u:***@127.0.0.1:1/"
    assert err.count(named) == 2
    assert "s3cret" not in err


def test_lorenz_curve_ends() -> None:
    from serving.report_plots import lorenz_curve

    items, shown_share = lorenz_curve(np.array([0, 1, 3]))
    assert items.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert shown_share.tolist() == pytest.approx([0, 0, 0.25, 1])


def test_export_is_accepted_by_training_data(filled_url: str, tmp_path: Path) -> None:
    data = pytest.importorskip("training.data")
    out = tmp_path / "logged"
    argv = ["export", "--url", filled_url, "--out", str(out), "--since", "2026-02-01"]
    assert events_cli.main(argv) == 0
    inter = pd.read_parquet(out / "interactions.parquet")
    assert len(inter) == 6 and sorted(inter["event"].unique()) == ["cart", "click", "purchase"]
    assert str(inter["timestamp"].dtype) == "datetime64[ns, UTC]"
    shown_df = pd.read_parquet(out / "impressions.parquet")
    assert len(shown_df) == 9 and shown_df["label"].sum() == 3
    assert set(pd.read_parquet(out / "items.parquet")["item_id"]) == {
        "a",
        "b",
        "t1",
        "t2",
        "t3",
        "t4",
    }
    assert events_cli.main(argv) == 0  # replaces its own earlier export
    canon = tmp_path / "canonical"
    assert data.main(["--data", str(out), "--out", str(canon)]) == 0
    assert len(pd.read_parquet(canon / "interactions.parquet")) == 6


def test_export_refuses_foreign_folder_and_empty_window(filled_url: str, tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert events_cli.main(["export", "--url", filled_url, "--out", str(foreign)]) == 2
    assert (foreign / "notes.txt").read_text() == "keep me"
    late = ["export", "--url", filled_url, "--out", str(tmp_path / "x"), "--since", "2030-01-01"]
    assert events_cli.main(late) == 2
    assert not (tmp_path / "x").exists()
