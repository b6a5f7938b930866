"""Baselines learn an obvious pattern (training/baselines.py). Run: pytest tests/test_baselines.py

The data is a checkerboard: users 0-9 like items 0-7 (block A), users 10-19 like items
8-15 (block B). Each user has 6 of their block's 8 items in train; the 2 held out rotate
with the user, so every item is held out for some user. Item content is a block direction
plus noise, so content models see the same pattern.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from training import baselines
from training.baselines import (
    BPRMF,
    EASE,
    ContentOnly,
    LogisticRegression,
    MostPopular,
    Recommender,
    default_baselines,
)
from training.metrics import RankingAccumulator

N_USERS, N_ITEMS, BLOCK = 20, 16, 8


def _block(index: int, size: int) -> int:
    return 0 if index < size // 2 else 1


def checkerboard() -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """(train [20, 16], content [16, 8], held-out items [20, 2])."""
    rows, cols, held = [], [], []
    for u in range(N_USERS):
        start = _block(u, N_USERS) * BLOCK
        out = [start + (u % BLOCK), start + ((u + 3) % BLOCK)]
        held.append(out)
        for i in range(start, start + BLOCK):
            if i not in out:
                rows.append(u)
                cols.append(i)
    train = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(N_USERS, N_ITEMS))
    rng = np.random.default_rng(7)
    content = rng.normal(0.0, 0.1, size=(N_ITEMS, 8)).astype(np.float32)
    content[:BLOCK, 0] += 1.0
    content[BLOCK:, 1] += 1.0
    return train, content, np.array(held)


def assert_own_block_first(scores: np.ndarray, held: np.ndarray) -> None:
    """Every user's held-out items outscore every item of the other block."""
    assert scores.shape == (N_USERS, N_ITEMS) and scores.dtype == np.float32
    for u in range(N_USERS):
        other = np.arange(N_ITEMS)[
            [_block(i, N_ITEMS) != _block(u, N_USERS) for i in range(N_ITEMS)]
        ]
        assert scores[u, held[u]].min() > scores[u, other].max(), f"user {u}: {scores[u]}"


@pytest.mark.parametrize(
    "model",
    [
        EASE(lam=1.0),
        BPRMF(dim=8, epochs=60, lr=0.05, seed=0),
        BPRMF(dim=8, epochs=60, lr=0.05, seed=0, sparse_above=0),  # SparseAdam (large data)
        LogisticRegression(epochs=30, lr=0.05, seed=0),
        ContentOnly(),
    ],
    ids=lambda m: m.name + ("-sparse" if getattr(m, "sparse_above", 1) == 0 else ""),
)
def test_learns_the_checkerboard(model: Recommender) -> None:
    train, content, held = checkerboard()
    scores = model.fit(train, content).score(np.arange(N_USERS))
    assert_own_block_first(scores, held)


def test_checkerboard_hit_rate_through_the_metrics() -> None:
    train, content, held = checkerboard()
    scores = EASE(lam=1.0).fit(train, content).score(np.arange(N_USERS))
    acc = RankingAccumulator(np.asarray(train.sum(axis=0)).ravel(), np.ones(N_ITEMS), k=2)
    acc.add(scores, held[:, 0], train.astype(bool))
    assert acc.result()["HR@2"] == 1.0  # only the 2 held-out items of the block are left


def test_most_popular_scores_train_counts_for_everyone() -> None:
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0]]))
    scores = MostPopular().fit(train, np.zeros((4, 3))).score(np.array([0, 2]))
    assert scores.tolist() == [[3, 2, 1, 0], [3, 2, 1, 0]]


def test_content_only_ranks_similar_content_first() -> None:
    train = sp.csr_matrix(np.array([[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]))
    content = np.array(
        [[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [-1, 0, 0], [0, 0, 0]], dtype=np.float32
    )
    scores = ContentOnly().fit(train, content).score(np.array([0, 1]))
    assert np.argsort(-scores[0]).tolist() == [0, 1, 2, 3, 4]  # item 4 has no text: last
    assert scores[0, 4] == baselines.NO_TEXT_SCORE
    assert np.isfinite(scores[1]).all()  # a user with no train items still gets scores
    assert (scores[1, :4] == 0).all()


def test_logistic_regression_probabilities_follow_the_pattern() -> None:
    train, content, held = checkerboard()
    model = LogisticRegression(epochs=30, lr=0.05, seed=0).fit(train, content)
    users = np.repeat(np.arange(N_USERS), 2)
    own = model.predict_proba(users, held.ravel())
    other = model.predict_proba(users, (held.ravel() + BLOCK) % N_ITEMS)
    assert own.dtype == np.float32 and ((own > 0) & (own < 1)).all()
    assert (own > other).all()
    with pytest.raises(ValueError, match="pair up"):
        model.predict_proba(np.array([0, 1]), np.array([0]))


@pytest.mark.parametrize(
    "make",
    [lambda s: BPRMF(dim=8, epochs=5, seed=s), lambda s: LogisticRegression(epochs=3, seed=s)],
)
def test_seeded_and_deterministic(make) -> None:
    train, content, _ = checkerboard()
    users = np.arange(N_USERS)
    first = make(3).fit(train, content).score(users)
    again = make(3).fit(train, content).score(users)
    other = make(4).fit(train, content).score(users)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_default_baselines_follow_the_protocol() -> None:
    models = default_baselines(seed=0)
    assert [m.name for m in models] == ["MostPopular", "BPR-MF", "LogReg", "ContentOnly", "EASE"]
    assert all(isinstance(m, Recommender) for m in models)


def test_bad_input_fails_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    train, content, _ = checkerboard()
    with pytest.raises(ValueError, match="one row per train column"):
        ContentOnly().fit(train, content[:5])
    with pytest.raises(ValueError, match="NaN or inf"):
        ContentOnly().fit(train, np.full_like(content, np.nan))
    with pytest.raises(ValueError, match="scipy.sparse"):
        MostPopular().fit(train.toarray(), content)
    with pytest.raises(ValueError, match=r"user indices must lie in \[0, 20\)"):
        MostPopular().fit(train, content).score(np.array([20]))
    monkeypatch.setattr(baselines, "EASE_MAX_ITEMS", 10)
    with pytest.raises(ValueError, match="limited to 10 items"):
        EASE().fit(train, content)
