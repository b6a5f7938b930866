"""Training whose cost per step does not grow with the catalogue (issue 11): the sampled
catalogue softmax with its log-Q correction, sparse ID embeddings, the streamed and
sharded epoch, and the memory check that fails a run before its first step.

Uses the two-cluster data set of tests/test_train.py (a known answer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from tests.test_train import CONFIG, DIM, write_cluster_dataset
from training import dataset as ds
from training.checkpoint import load_run
from training.config import TrainConfig
from training.distributed import Cluster
from training.model import build_model
from training.scoring import pick_device, score_users
from training.train import (
    EpochBatches,
    NegativeSampler,
    check_fits,
    make_batch,
    make_optimizers,
    sampled_catalogue_loss,
    sampling_distribution,
    steps_per_epoch,
    train,
    use_sparse_embeddings,
)


@pytest.fixture(scope="module")
def cluster_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_cluster_dataset(tmp_path_factory.mktemp("clusters"))


@pytest.fixture(scope="module")
def data(cluster_dirs) -> ds.TrainingData:
    return ds.load_training_data(*cluster_dirs, "eval", 10, 0.0, 0)


def _config(**overrides) -> TrainConfig:
    return TrainConfig.from_dict({**CONFIG, "content_dim": DIM, "history_len": 10, **overrides})


def test_sampled_catalogue_softmax_is_the_corrected_softmax_over_the_sample(data) -> None:
    """K = B in-batch positives + N uniform items; logits minus log(B p(j) + N / n);
    a column holding a row's own positive elsewhere is masked; row b's target is column b."""
    config = _config(full_softmax_max_items=0, catalogue_negatives=7, id_dropout=0.0)
    events = np.arange(16)
    batch = make_batch(data, events, NegativeSampler(sampling_distribution(data, config)),
                       config, np.random.default_rng(1))  # fmt: skip
    n_items, b = len(data.item_vocab), len(events)
    targets = data.item_to_vocab[data.train_items[events]]
    items = batch.cat_items.numpy()
    assert items.shape == (b + 7,) and np.array_equal(items[:b], targets)
    assert items[b:].min() >= 1 and items[b:].max() <= n_items  # never the reserved row
    p = np.bincount(data.item_to_vocab[data.train_items], minlength=n_items + 1)
    p = p / len(data.train_items)
    assert np.allclose(batch.cat_logq.numpy(), np.log(b * p[items] + 7 / n_items), atol=1e-6)
    catalogue_row = {int(v): row for row, v in enumerate(data.item_to_vocab[:-1]) if v > 0}
    expected_content = data.content[[catalogue_row[int(i)] for i in items]]
    assert np.array_equal(batch.cat_content.numpy(), expected_content)
    torch.manual_seed(0)
    model = build_model(config, len(data.user_vocab), len(data.item_vocab)).eval()
    proj = model.content_proj(batch.content_table)
    side = model.encode_user(
        batch.user_idx, batch.hist_idx, proj[batch.hist_content], batch.hist_mask
    )
    query = (side.user + side.seq).squeeze(1)
    vectors = model.item_repr(batch.cat_items, model.content_proj(batch.cat_content),
                              model.item_counts[batch.cat_items])  # fmt: skip
    logits = query @ vectors.T - batch.cat_logq
    for row in range(b):
        for col in range(len(items)):
            if col != row and items[col] == targets[row]:
                logits[row, col] = -1e9
    expected = F.cross_entropy(logits, torch.arange(b))
    assert torch.isclose(sampled_catalogue_loss(model, side, batch), expected, atol=1e-5)


def test_catalogue_above_the_threshold_trains_sampled_and_learns(cluster_dirs, tmp_path) -> None:
    run = tmp_path / "sampled"
    config = _config(mode="eval", full_softmax_max_items=0, catalogue_negatives=8)
    train(config, *cluster_dirs, run)
    model, payload, _ = load_run(run)
    data = ds.load_training_data(*cluster_dirs, "eval", 10, 0.0, 0)
    scores = score_users(model, data, data.test.users, pick_device("cpu"))
    scores[data.test.exclude[data.test.users].toarray()] = -np.inf
    assert (scores.argmax(axis=1) == data.test.items).mean() >= 0.9


def test_sparse_embeddings_train_with_sparse_adam_and_learn(cluster_dirs, tmp_path) -> None:
    run = tmp_path / "sparse"
    train(_config(mode="eval", sparse_embeddings="on"), *cluster_dirs, run)
    model, _, _ = load_run(run)
    data = ds.load_training_data(*cluster_dirs, "eval", 10, 0.0, 0)
    scores = score_users(model, data, data.test.users, pick_device("cpu"))
    scores[data.test.exclude[data.test.users].toarray()] = -np.inf
    assert (scores.argmax(axis=1) == data.test.items).mean() >= 0.9
    sparse = build_model(_config(), 5, 5, sparse=True)
    kinds = [type(o).__name__ for o in make_optimizers(sparse, _config())]
    assert kinds == ["SparseAdam", "Adam"]
    assert [type(o).__name__ for o in make_optimizers(build_model(_config(), 5, 5), _config())] == [
        "Adam"
    ]


def test_sparse_embeddings_auto_and_its_refusals() -> None:
    solo, nccl = Cluster(), Cluster(0, 2, 0, "nccl")
    assert not use_sparse_embeddings(_config(), 50_000, solo)
    assert use_sparse_embeddings(_config(), 1_000_000, solo)
    assert not use_sparse_embeddings(_config(), 1_000_000, nccl)
    assert not use_sparse_embeddings(_config(weight_decay=0.01), 1_000_000, solo)
    with pytest.raises(ValueError, match="--weight-decay 0"):
        use_sparse_embeddings(_config(sparse_embeddings="on", weight_decay=0.01), 10, solo)
    with pytest.raises(ValueError, match="--sparse-embeddings off"):
        use_sparse_embeddings(_config(sparse_embeddings="on"), 10, nccl)


def test_an_epoch_is_streamed_in_shards_that_cover_every_event_once(data) -> None:
    config = _config(batch_size=8)
    n = len(data.train_items)
    shards, batches = [], []
    for rank in range(2):
        rngs = (np.random.default_rng(0), np.random.default_rng([0, rank]))
        epoch = EpochBatches(data, config, rngs, Cluster(rank, 2))
        shards.append(epoch.shard())
        batches.append(list(epoch))
    assert len(shards[0]) == len(shards[1]) == -(-n // 2)
    assert set(np.concatenate(shards)) == set(range(n))  # all events (a few twice: wrap)
    steps = steps_per_epoch(data, config, Cluster(0, 2))
    assert len(batches[0]) == len(batches[1]) == steps == steps_per_epoch(data, config)
    assert all(len(b.user_idx) <= 4 for b in batches[0])  # half the global batch each
    assert batches[0][0].hist_idx.shape[1] == config.history_len


def test_a_run_too_large_for_memory_fails_before_training_and_names_the_setting(data) -> None:
    with pytest.raises(MemoryError, match="--embedding-dim"):
        check_fits(_config(embedding_dim=4096, eval_batch_users=1), data, available=10**6)
    full = _config(batch_size=10**7, full_softmax_max_items=10**6)
    with pytest.raises(MemoryError, match="--full-softmax-max-items below"):
        check_fits(full, data, available=10**8)
    check_fits(_config(), data, available=10**9)  # fits: no error
    check_fits(_config(batch_size=10**7, full_softmax_max_items=0), data, available=10**8)


def test_cli_refuses_a_bad_new_setting_with_its_rule(tmp_path) -> None:
    from training.train import main

    with pytest.raises(SystemExit):
        main(["--data", "x", "--features", "y", "--out", str(tmp_path),
              "--sparse-embeddings", "maybe"])  # fmt: skip
