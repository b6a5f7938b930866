"""Training and evaluation on a hand-made data set with a known answer (issue 4).

Two clusters of users and items: even users only ever interact with items i00-i05, odd
users with i06-i11, in a seeded order. After excluding a user's train and validation
items, exactly one item of their own cluster is left, the test item: a model that learned
anything must rank it first. Content vectors are random noise, so the pattern has to be
learned from the interactions.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core import schema
from training import dataset as ds
from training.checkpoint import load_config, load_run
from training.config import TrainConfig, add_config_arguments, config_from_args
from training.evaluate import evaluate_run
from training.scoring import pick_device, score_users
from training.train import main as train_main
from training.train import train

N_USERS, N_ITEMS, DIM = 40, 12, 8
CONFIG = {
    "epochs": 16,
    "patience": 4,
    "eval_every": 4,
    "batch_size": 64,
    "negatives": 4,
    "embedding_dim": 16,
    "attention_dim": 8,
    "attention_rank": 4,
    "mlp_dims": [16],
    "lr": 0.01,
    "id_dropout": 0.1,
    "device": "cpu",
    "num_threads": 1,  # tiny tensors: thread hand-offs cost more than they save
}


def write_cluster_dataset(root: Path) -> tuple[Path, Path]:
    """Canonical tables (docs/ARCHITECTURE.md 1) and item features for the two clusters."""
    rng = np.random.default_rng(0)
    data_dir, features_dir = root / "data", root / "features"
    data_dir.mkdir(parents=True)
    features_dir.mkdir(parents=True)
    items = [f"i{j:02d}" for j in range(N_ITEMS)]
    rows, start = [], pd.Timestamp("2024-01-01", tz="UTC")
    for u in range(N_USERS):
        own = items[:6] if u % 2 == 0 else items[6:]
        for step, item in enumerate(rng.permutation(own)):
            rows.append((f"u{u:02d}", item, start + pd.Timedelta(minutes=10 * step + u)))
    events = pd.DataFrame(rows, columns=[schema.USER_ID, schema.ITEM_ID, schema.TIMESTAMP])
    events[schema.EVENT], events[schema.VALUE] = "click", np.nan
    ordered = events.sort_values([schema.USER_ID, schema.TIMESTAMP, schema.ITEM_ID])
    position = ordered.groupby(schema.USER_ID).cumcount(ascending=False)
    splits = {schema.TEST_FILE: position == 0, schema.VALID_FILE: position == 1}
    splits[schema.TRAIN_FILE] = position >= 2
    for name, mask in splits.items():
        ordered[mask].to_parquet(data_dir / name, index=False)
    ordered.to_parquet(data_dir / schema.INTERACTIONS_FILE, index=False)
    vectors = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    features = pd.DataFrame({schema.ITEM_ID: items, schema.CONTENT_VEC: list(vectors)})
    features[schema.HAS_TEXT] = 1
    features.to_parquet(features_dir / schema.ITEM_FEATURES_FILE, index=False)
    return data_dir, features_dir


@pytest.fixture(scope="module")
def cluster_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_cluster_dataset(tmp_path_factory.mktemp("clusters"))


@pytest.fixture(scope="module")
def trained_run(cluster_dirs: tuple[Path, Path], tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "clusters"
    train(TrainConfig.from_dict({**CONFIG, "mode": "eval"}), *cluster_dirs, run)
    return run


def test_obvious_pattern_is_learned(trained_run: Path, cluster_dirs) -> None:
    payload = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    config = TrainConfig.from_dict(payload["config"])
    model = load_run(trained_run)[0]
    data = ds.load_training_data(*cluster_dirs, "eval", config.history_len, 0.0, config.seed)
    scores = score_users(model, data, data.test.users, pick_device("cpu"))
    scores[data.test.exclude[data.test.users].toarray()] = -np.inf
    top = scores.argmax(axis=1)
    assert (top == data.test.items).mean() >= 0.9


def test_run_dir_holds_checkpoint_config_vocab_and_tensorboard(trained_run: Path) -> None:
    config = load_config(trained_run)
    assert config.content_dim == DIM and config.mode == "eval"
    vocab = json.loads((trained_run / "vocab.json").read_text())
    assert len(vocab["items"]) == N_ITEMS and len(vocab["users"]) == N_USERS
    assert any((trained_run / "tensorboard").iterdir())
    summary = json.loads((trained_run / "train_summary.json").read_text())
    assert summary["best_epoch"] >= 1


def test_evaluation_reports_fusion_and_baselines(trained_run: Path) -> None:
    report = evaluate_run(trained_run)
    models = report["models"]
    assert {"FusionCTR", "MostPopular", "BPR-MF", "LogReg", "ContentOnly"} <= set(models)
    fusion = models["FusionCTR"]
    for key in ("HR@10", "NDCG@10", "TailHR@10", "APLT@10", "Gini@10", "AUC", "F1@10"):
        assert key in fusion, key
    assert fusion["MRR@10"] >= 0.9  # the test item ranks first for nearly everyone
    assert fusion["n_users"] == N_USERS and fusion["n_set_users"] == N_USERS
    assert fusion["AUC"] > 0.9
    for name in ("metrics.json", "metrics.md", "metrics.png"):
        assert (trained_run / name).stat().st_size > 0
    assert "| FusionCTR |" in (trained_run / "metrics.md").read_text()


def test_modes_split_the_same_tables_differently(cluster_dirs) -> None:
    evaluation = ds.load_training_data(*cluster_dirs, "eval", 50, 0.0, 0)
    deploy = ds.load_training_data(*cluster_dirs, "deploy", 50, 0.0, 0)
    assert len(evaluation.train_items) == N_USERS * 4 and evaluation.test is not None
    assert len(deploy.train_items) == N_USERS * 5 and deploy.test is None
    assert (deploy.valid.items == evaluation.test.items).all()  # deploy stops on the last


def test_training_histories_are_causal(cluster_dirs) -> None:
    data = ds.load_training_data(*cluster_dirs, "eval", 3, 0.0, 0)
    user_events = np.flatnonzero(data.train_users == 0)
    hist = ds.causal_histories(data, user_events, 3)
    items = data.train_items[user_events]
    assert (hist[0] == data.pad).all()  # the first event has no history
    assert hist[2].tolist() == [data.pad, items[0], items[1]]  # oldest first, left-padded
    assert hist[3].tolist() == items[:3].tolist()
    stale = ds.causal_histories(data, user_events, 3, np.array([1, 1, 0, 1]))
    assert (stale[0] == data.pad).all() and (stale[1] == data.pad).all()
    assert stale[2].tolist() == hist[2].tolist()  # skip 0: unchanged
    assert stale[3].tolist() == [data.pad, items[0], items[1]]  # ends one item earlier


def test_cold_items_are_hidden_from_training(cluster_dirs) -> None:
    data = ds.load_training_data(*cluster_dirs, "eval", 50, 0.25, 0)
    hidden = np.flatnonzero(data.hidden_items)
    assert len(hidden) == 3
    assert not np.isin(data.train_items, hidden).any()
    assert (data.item_to_vocab[hidden] == 0).all() and (data.train_counts[hidden] == 0).all()
    assert len(data.item_vocab) == N_ITEMS - 3


def test_cli_overrides_and_bad_config_fail_clearly() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--negatives", "3", "--mlp-dims", "8", "4", "--sampler", "uniform"])
    config = config_from_args(args)
    assert config.negatives == 3 and config.mlp_dims == (8, 4)
    with pytest.raises(ValueError, match="sampler must be"):
        config_from_args(parser.parse_args(["--sampler", "zipf"]))
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"negativs": 3})


def test_missing_tables_say_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="python -m training.data"):
        ds.load_training_data(tmp_path, tmp_path, "eval", 50, 0.0, 0)


@pytest.mark.parametrize("mode", ["deploy", "eval"])
def test_cli_trains_and_never_evaluates(cluster_dirs, tmp_path: Path, mode: str) -> None:
    """Evaluation is the caller's next step (`python -m training.evaluate`), in any mode."""
    data_dir, features_dir = cluster_dirs
    argv = ["--data", str(data_dir), "--features", str(features_dir), "--out", str(tmp_path)]
    argv += ["--mode", mode, "--epochs", "1", "--embedding-dim", "8", "--device", "cpu"]
    train_main(argv)
    assert load_config(tmp_path).mode == mode
    assert (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "metrics.json").exists()


def test_popularity_sampler_and_its_log_q_correction(cluster_dirs) -> None:
    from training.train import NegativeSampler, make_batch, sampling_distribution

    data = ds.load_training_data(*cluster_dirs, "eval", 5, 0.0, 0)
    config = TrainConfig(sampler="popularity", pop_alpha=1.0, negatives=3, id_dropout=0.0)
    q = sampling_distribution(data, config)
    assert np.allclose(q, data.train_counts / data.train_counts.sum())
    batch = make_batch(data, np.arange(6), NegativeSampler(q), config, np.random.default_rng(0))
    assert batch.labels[:, 0].eq(1).all() and batch.labels[:, 1:].eq(0).all()
    rows = batch.content_table.shape[0]
    assert batch.hist_content.max() < rows and batch.item_content.max() < rows
    uniform = TrainConfig(sampler="uniform", negatives=3)
    sampler = NegativeSampler(sampling_distribution(data, uniform))
    plain = make_batch(data, np.arange(6), sampler, uniform, np.random.default_rng(0))
    assert plain.logq.eq(0).all()  # uniform needs no correction
    n = np.count_nonzero(q)
    item = data.train_items[0]
    expected = np.log(q[item] * n)
    assert np.isclose(batch.logq[0, 0].item(), expected, atol=1e-5)


@pytest.mark.parametrize("module", ["training.train", "training.evaluate"])
def test_cli_help_exits_cleanly(module: str) -> None:
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


def test_softmax_loss_is_cross_entropy_over_the_candidates() -> None:
    from torch.nn import functional as F

    from training.train import training_loss

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1.0
    bce = F.binary_cross_entropy_with_logits(logits, labels)
    softmax = -torch.log_softmax(logits, dim=1)[:, 0].mean()
    assert torch.isclose(training_loss(logits, labels, TrainConfig(loss="bce")), bce)
    config = TrainConfig(loss="softmax", bce_weight=0.0)
    assert torch.isclose(training_loss(logits, labels, config), softmax)
    config = TrainConfig(loss="softmax", bce_weight=0.5)
    assert torch.isclose(training_loss(logits, labels, config), softmax + 0.5 * bce)
    with pytest.raises(ValueError, match="loss must be"):
        TrainConfig(loss="hinge")


def test_cosine_schedule_decays_the_learning_rate_to_zero_at_the_last_epoch() -> None:
    from training.train import make_scheduler

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=0.1)
    assert make_scheduler(optimizer, TrainConfig(lr_schedule="constant"), 10) is None
    scheduler = make_scheduler(optimizer, TrainConfig(lr_schedule="cosine", epochs=2), 10)
    rates = []
    for _ in range(20):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates[9] == pytest.approx(0.05) and rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))


def test_test_histories_can_include_the_validation_item(cluster_dirs) -> None:
    from training.evaluate import histories_with_validation

    data = ds.load_training_data(*cluster_dirs, "eval", 3, 0.0, 0)
    hist = histories_with_validation(data)
    users = data.valid.users
    assert (hist[users, -1] == data.valid.items).all()
    assert (hist[users, :-1] == data.histories[users, 1:]).all()  # the oldest item drops out
    assert (data.histories[users, -1] != data.valid.items).any()  # train-only differs


def test_evaluation_reports_rerank_sweep_and_latest_history(trained_run: Path) -> None:
    from training.evaluate import FUSION_LATEST, RERANK_WEIGHTS

    models = evaluate_run(trained_run)["models"]
    assert FUSION_LATEST in models and "NDCG@10" in models[FUSION_LATEST]
    aplt = [models["FusionCTR"]["APLT@10"]]
    aplt += [models[f"FusionCTR+rerank λ={w:g}"]["APLT@10"] for w in RERANK_WEIGHTS]
    assert f"{FUSION_LATEST}+rerank λ=0.1" in models
    assert aplt == sorted(aplt)  # a larger tail weight never shows less of the tail


def test_catalogue_softmax_is_cross_entropy_over_every_vocabulary_item(cluster_dirs) -> None:
    """vocab_content lines content up with vocabulary rows; catalogue_loss is the softmax
    of the positive against all items (the reserved row never wins), and it learns."""
    from torch.nn import functional as F

    from training.model import build_model
    from training.train import catalogue_loss, vocab_content

    data = ds.load_training_data(*cluster_dirs, "eval", 10, 0.0, 0)
    content = vocab_content(data)
    assert content.shape == (len(data.item_vocab) + 1, DIM) and not content[0].any()
    for pos, item in enumerate(data.item_vocab, start=1):
        row = int(np.flatnonzero(data.item_ids == item)[0])
        assert torch.equal(content[pos], torch.from_numpy(data.content[row]))
    config = TrainConfig.from_dict({**CONFIG, "content_dim": DIM})
    torch.manual_seed(0)
    model = build_model(config, len(data.user_vocab), len(data.item_vocab))
    events = np.arange(len(data.train_items))
    users = data.train_users[events]
    hist = ds.causal_histories(data, events, 10)
    side_in = ds.user_side(data, users, hist)
    side = model.encode_user(
        side_in["user_idx"], side_in["hist_idx"], model.content_proj(side_in["hist_content"]),
        side_in["hist_mask"],
    )  # fmt: skip
    targets = torch.from_numpy(data.item_to_vocab[data.train_items[events]])
    full = model.catalogue_logits(side, model.content_proj(content))
    expected = F.cross_entropy(torch.cat([full[:, :1] * 0 - 1e9, full[:, 1:]], 1), targets)
    loss = catalogue_loss(model, side, model.content_proj(content), targets)
    assert torch.isclose(loss, expected)
    assert loss > np.log(len(data.item_vocab)) * 0.5  # untrained: near-uniform over items


def test_evaluation_scores_the_catalogue_once_per_history_variant(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-rank sweep re-ranks the scores evaluate_scorer already computed."""
    from training import scoring

    scored: list[int] = []
    score_users_ = scoring.score_users

    def counting(model, data, users, *args, **kwargs):
        scored.append(len(users))
        return score_users_(model, data, users, *args, **kwargs)

    monkeypatch.setattr(scoring, "score_users", counting)
    models = evaluate_run(trained_run)["models"]
    assert sum(scored) == 2 * N_USERS  # each test user: train-only history, then incl. valid
    assert "FusionCTR+rerank λ=0.5" in models
