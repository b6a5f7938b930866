"""Evaluation in bounded memory and time (issue 11): chunked scoring equals one forward
pass, metrics do not depend on chunk sizes, validation uses its seeded user sample, and a
baseline that cannot run at the catalogue's size is reported as skipped.

Data: ``benchmarks.eval_cost.random_training_data`` at a tiny size (items never drawn
into a history are new items, some histories are empty) and an untrained small model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from benchmarks.eval_cost import random_training_data
from training import baselines
from training import dataset as ds
from training.config import TrainConfig
from training.evaluate import SKIPPED, evaluate_models, markdown_table
from training.model import build_model
from training.scoring import catalogue_side, ranking_metrics, score_users
from training.train import valid_subset

N_ITEMS, N_USERS, HISTORY, DIM = 150, 40, 6, 12
SMALL = {
    "content_dim": DIM,
    "history_len": HISTORY,
    "embedding_dim": 8,
    "attention_dim": 4,
    "attention_rank": 2,
    "mlp_dims": [8],
    "device": "cpu",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: on a busy machine torch's threads cost 10x more than they save."""
    with baselines.single_thread():
        yield


@pytest.fixture(scope="module")
def data() -> ds.TrainingData:
    return random_training_data(N_ITEMS, N_USERS, HISTORY, DIM, seed=3, min_history=0)


@pytest.fixture(scope="module")
def model(data: ds.TrainingData):
    torch.manual_seed(0)
    config = TrainConfig.from_dict(SMALL)
    counts = torch.from_numpy(data.vocab_counts())
    return build_model(config, len(data.user_vocab), len(data.item_vocab), counts).eval()


def test_the_data_has_new_items_and_empty_histories(data: ds.TrainingData) -> None:
    assert (data.item_to_vocab[:-1] == 0).any() and (data.item_to_vocab[:-1] > 0).any()
    assert (data.histories == data.pad).all(axis=1).any()


@pytest.mark.parametrize("pairs", [1, 7, 40, 10**9])
def test_chunked_scores_equal_one_forward_pass_over_the_catalogue(data, model, pairs) -> None:
    """score_users (item slices of pairs // users, catalogue projected once) gives what
    model.score gives over the whole catalogue at once, for either history."""
    users = np.arange(0, N_USERS, 3)
    with torch.no_grad():
        whole = model.score(
            **ds.user_side(data, users, data.histories[users]),
            **ds.item_side(data, np.arange(data.n_catalogue)[None, :]),
        ).numpy()
    cpu = torch.device("cpu")
    chunked = score_users(model, data, users, cpu, pairs=pairs)
    assert chunked.shape == (len(users), N_ITEMS) and chunked.dtype == np.float32
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)
    assert np.ptp(whole, axis=1).min() > 0  # the scores differ across items: not vacuous
    catalogue = catalogue_side(model, data, cpu)
    shifted = np.roll(data.histories, 1, axis=0)
    with torch.no_grad():
        other = model.score(
            **ds.user_side(data, users, shifted[users]),
            **ds.item_side(data, np.arange(data.n_catalogue)[None, :]),
        ).numpy()
    again = score_users(model, data, users, cpu, shifted, catalogue, pairs)
    np.testing.assert_allclose(again, other, rtol=1e-5, atol=1e-5)
    assert not np.allclose(again, chunked)  # the histories argument is used


def test_validation_sample_size_is_respected(data, model) -> None:
    config = TrainConfig.from_dict({**SMALL, "valid_users": 13})
    sample = valid_subset(data.valid, config)
    assert len(sample.users) == 13 and len(np.unique(sample.users)) == 13
    assert np.all(np.diff(sample.users) > 0)  # kept in holdout order
    assert set(sample.users) <= set(data.valid.users)
    rows = np.searchsorted(data.valid.users, sample.users)
    assert (sample.items == data.valid.items[rows]).all()  # each user keeps their target
    again = valid_subset(data.valid, config)
    assert (again.users == sample.users).all()  # seeded
    metrics = ranking_metrics(model, data, sample, config, torch.device("cpu"))
    assert metrics["n_users"] == 13
    for every in (0, N_USERS, 10**6):  # 0 = all; a sample larger than the holdout = all
        assert valid_subset(data.valid, dataclasses.replace(config, valid_users=every)) is (
            data.valid
        )


def test_default_validation_keeps_every_movielens_100k_user() -> None:
    """ML-100K's 943 validation users are all used at the default sample size, so its
    recorded early-stopping figures stand; a larger holdout is sampled."""
    config = TrainConfig()
    assert 943 < config.valid_users < 20_000

    def holdout(n: int) -> ds.Holdout:
        return ds.Holdout(users=np.arange(n), items=np.zeros(n, np.int64), exclude=None)

    assert len(valid_subset(holdout(943), config).users) == 943
    assert len(valid_subset(holdout(20_000), config).users) == config.valid_users


def test_bad_evaluation_sizes_fail_clearly() -> None:
    for field in ("eval_pairs", "eval_batch_users"):
        with pytest.raises(ValueError, match=f"{field} must be >= 1"):
            TrainConfig(**{field: 0})
    with pytest.raises(ValueError, match="valid_users must be >= 0"):
        TrainConfig(valid_users=-1)


@pytest.fixture(scope="module")
def reports(data, model) -> list[dict]:
    """evaluate_models at two very different chunkings, EASE over its item limit."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(baselines, "EASE_MAX_ITEMS", N_ITEMS - 1)
        out = []
        for users, pairs in ((3, 5), (64, 10**6)):
            config = TrainConfig.from_dict(
                {**SMALL, "eval_batch_users": users, "eval_pairs": pairs}
            )
            out.append(evaluate_models(model, data, config))
        return out


def test_evaluation_does_not_depend_on_chunk_sizes(reports: list[dict]) -> None:
    small, large = reports
    assert small.keys() == large.keys()
    assert {"FusionCTR", "FusionCTR+rerank λ=0.3", "BPR-MF", "LogReg"} <= set(small)
    for name, metrics in small.items():
        timing = {"eval_seconds", "fit_seconds"}
        assert metrics.keys() == large[name].keys(), name
        for key in metrics.keys() - timing:
            assert metrics[key] == pytest.approx(large[name][key], nan_ok=True), (name, key)
    assert small["FusionCTR"]["n_users"] == N_USERS
    assert small["FusionCTR"]["n_set_users"] == N_USERS


def test_a_baseline_too_large_for_the_catalogue_is_reported_as_skipped(
    reports: list[dict],
) -> None:
    models = reports[0]
    assert models["EASE"] == {SKIPPED: models["EASE"][SKIPPED]}
    assert f"limited to {N_ITEMS - 1} items" in models["EASE"][SKIPPED]
    report = {
        "run": "r", "split": "test", "mode": "eval", "k": 10, "n_cases": N_USERS,
        "n_items": N_ITEMS, "models": models,
    }  # fmt: skip
    table = markdown_table(report)
    assert "| EASE | skipped | - |" in table
    assert f"EASE skipped: EASE needs a dense {N_ITEMS} x {N_ITEMS} matrix" in table
    assert "| BPR-MF | 0." in table  # the others are still reported


def test_a_shortlist_gets_the_full_model_and_the_rest_ranks_below_by_the_dot_part(
    data: ds.TrainingData, model
) -> None:
    """Each user's top N by (u + s).v carry the full model's exact logits; every other
    item scores below all of them, in (u + s).v order; N >= catalogue is exact ranking."""
    users = np.arange(N_USERS)
    device = torch.device("cpu")
    catalogue = catalogue_side(model, data, device)
    exact = score_users(model, data, users, device, catalogue=catalogue)
    assert np.array_equal(
        score_users(model, data, users, device, catalogue=catalogue, shortlist=N_ITEMS), exact
    )
    short = score_users(model, data, users, device, catalogue=catalogue, pairs=37, shortlist=20)
    side_in = ds.user_side(data, users, data.histories[users])
    side = model.encode_user(
        side_in["user_idx"],
        side_in["hist_idx"],
        model.content_proj(side_in["hist_content"]),
        side_in["hist_mask"],
    )
    dot = ((side.user + side.seq).squeeze(1) @ catalogue.vec.T).detach().numpy()  # fmt: skip
    for row in range(N_USERS):
        top = np.argsort(-dot[row], kind="stable")[:20]
        rest = np.setdiff1d(np.arange(N_ITEMS), top)
        assert np.allclose(short[row, top], exact[row, top], atol=1e-5)
        assert short[row, rest].max() < short[row, top].min()
        assert np.array_equal(np.argsort(short[row, rest]), np.argsort(dot[row, rest]))
