"""Baseline recommenders that the fusion model is measured against (DESIGN.md, issue 4).

Imported by ``python -m training.evaluate``; tested by ``pytest tests/test_baselines.py``.
Each baseline fits on a binary train matrix [U, I] (rows = user indices, columns = item
indices of the evaluation split) and item content vectors [I, C] (zero rows = no text),
then scores every item for a chunk of users; higher is better::

    for model in default_baselines(seed=0):
        model.fit(train, item_content)
        scores = model.score(np.arange(0, 500))  # [500, I] float32

- ``MostPopular``: train interaction count of each item.
- ``BPRMF``: matrix factorisation trained with the BPR pairwise loss (torch).
- ``LogisticRegression``: a CTR baseline over item-ID one-hot, item content and
  user-profile x item-content features, trained with sampled negatives; has predict_proba.
- ``ContentOnly``: cosine between the user's mean content vector and each item's.
- ``EASE``: closed-form item-item linear autoencoder (Steck 2019), a strong cheap reference.

All are seeded and deterministic: the same seed and data give the same scores.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.special import expit
from tqdm import tqdm

log = logging.getLogger(__name__)

# EASE inverts a dense I x I float64 matrix in place: about 12 bytes x I^2 at the peak
# (10.8 GB at 30k items); above this it is skipped (``TooLarge``), never run into an OOM
EASE_MAX_ITEMS = 30_000
NO_TEXT_SCORE = -2.0  # ContentOnly: below any cosine, so items without text rank last


class TooLarge(ValueError):
    """A baseline cannot be fitted at this data size (the message says why and the limit):
    ``training.evaluate`` reports it as skipped instead of failing."""


@runtime_checkable
class Recommender(Protocol):
    """What the evaluation needs from a model. Optional: ``predict_proba(users, items)``."""

    name: str

    def fit(self, train: sp.csr_matrix, item_content: np.ndarray) -> Recommender: ...

    def score(self, users: np.ndarray) -> np.ndarray: ...


def check_inputs(train: sp.spmatrix, item_content: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """Return (binary float32 CSR train, float32 content) or raise a ValueError saying why."""
    if not sp.issparse(train) or train.ndim != 2:
        raise ValueError(
            f"train must be a 2-D scipy.sparse matrix [users, items], got {type(train).__name__}"
        )
    content = np.asarray(item_content, dtype=np.float32)
    if content.ndim != 2 or content.shape[0] != train.shape[1]:
        raise ValueError(
            f"item_content must be [items, dim] with one row per train column ({train.shape[1]}),"
            f" got {content.shape}"
        )
    if not np.isfinite(content).all():
        raise ValueError("item_content holds NaN or inf: rebuild the content vectors")
    binary = sp.csr_matrix(train, dtype=np.float32, copy=True)
    binary.eliminate_zeros()
    binary.data[:] = 1.0
    return binary, content


def _check_users(users: np.ndarray, n_users: int) -> np.ndarray:
    """Return users as an int64 array, or raise when one is outside the fitted matrix."""
    users = np.asarray(users, dtype=np.int64).reshape(-1)
    if users.size and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"user indices must lie in [0, {n_users}) (rows of the train matrix)")
    return users


def user_profiles(train: sp.csr_matrix, content: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum of each user's train items' content vectors and how many of them have text."""
    has_text = (np.abs(content).sum(axis=1) > 0).astype(np.float32)
    sums = np.asarray(train @ content, dtype=np.float32)
    n_text = np.asarray(train @ has_text).reshape(-1)
    return sums, n_text


def _mean_profiles(train: sp.csr_matrix, content: np.ndarray) -> np.ndarray:
    """Mean content vector of each user's train items with text (zeros when none)."""
    sums, n_text = user_profiles(train, content)
    return sums / np.maximum(n_text, 1.0)[:, None]


def _sample_negatives(
    train: sp.csr_matrix, users: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Uniform negative items per user; items the user has are redrawn once."""
    items = rng.integers(0, train.shape[1], size=users.size)
    clash = np.asarray(train[users, items]).reshape(-1) > 0
    items[clash] = rng.integers(0, train.shape[1], size=int(clash.sum()))
    return items


class MostPopular:
    """Score = the item's train interaction count (the same list for every user)."""

    name = "MostPopular"

    def fit(self, train: sp.csr_matrix, item_content: np.ndarray) -> MostPopular:
        """Count each item's train interactions."""
        binary, _ = check_inputs(train, item_content)
        self.n_users = binary.shape[0]
        self.counts = np.asarray(binary.sum(axis=0), dtype=np.float32).reshape(-1)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        """[len(users), I] float32 train counts."""
        users = _check_users(users, self.n_users)
        return np.tile(self.counts, (users.size, 1))


class EASE:
    """Closed-form item-item model: B = I - P / diag(P), P = (X^T X + lambda I)^-1."""

    name = "EASE"

    def __init__(self, lam: float = 500.0) -> None:
        self.lam = lam

    def fit(self, train: sp.csr_matrix, item_content: np.ndarray) -> EASE:
        """Solve for the item-item weights (dense I x I; refuses huge catalogues)."""
        binary, _ = check_inputs(train, item_content)
        n_items = binary.shape[1]
        if n_items > EASE_MAX_ITEMS:
            raise TooLarge(
                f"EASE needs a dense {n_items} x {n_items} matrix; it is limited to "
                f"{EASE_MAX_ITEMS} items: leave it out for this catalogue"
            )
        gram = (binary.T @ binary).toarray().astype(np.float64)
        gram[np.diag_indices(n_items)] += self.lam
        b = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)  # reuses gram
        del gram
        b /= -np.diag(b).copy()[None, :]
        b[np.diag_indices(n_items)] = 0.0
        self.weights = b.astype(np.float32)
        self.train = binary
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        """[len(users), I] float32: each user's train row times the item-item weights."""
        users = _check_users(users, self.train.shape[0])
        return np.asarray(self.train[users] @ self.weights, dtype=np.float32)


class ContentOnly:
    """Cosine between the user's mean train-item content and each item's content.

    Items without text score NO_TEXT_SCORE (last); a user with no text in their train items
    has a zero profile, so every item with text ties at 0 (no information, no hit).
    """

    name = "ContentOnly"

    def fit(self, train: sp.csr_matrix, item_content: np.ndarray) -> ContentOnly:
        """Normalise item vectors and build unit-length user profiles."""
        binary, content = check_inputs(train, item_content)
        norms = np.linalg.norm(content, axis=1, keepdims=True)
        self.has_text = norms.reshape(-1) > 0
        self.items = content / np.maximum(norms, 1e-12)
        profiles = _mean_profiles(binary, self.items)
        p_norms = np.linalg.norm(profiles, axis=1, keepdims=True)
        self.profiles = profiles / np.maximum(p_norms, 1e-12)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        """[len(users), I] float32 cosine similarities."""
        users = _check_users(users, self.profiles.shape[0])
        scores = self.profiles[users] @ self.items.T
        scores[:, ~self.has_text] = NO_TEXT_SCORE
        return scores.astype(np.float32)


def _positive_pairs(binary: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) index arrays of the train matrix's non-zero cells, row-major."""
    coo = binary.tocoo()
    return coo.row.astype(np.int64), coo.col.astype(np.int64)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread, then restore the setting.

    The baselines' batches are tiny: on a busy 2-core machine, torch's worker threads spin
    against each other and made a fit 3-10x slower than one thread (measured on ML-100K).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batches(n: int, batch_size: int) -> range:
    """Start offsets of consecutive mini-batches over n examples."""
    return range(0, n, batch_size)


class BPRMF:
    """Matrix factorisation (user and item vectors + item bias) trained with BPR.

    Each epoch pairs every train interaction with one uniformly sampled negative item and
    minimises -log sigmoid(x_ui - x_uj) plus L2 on the vectors of the batch.
    """

    name = "BPR-MF"

    def __init__(
        self,
        dim: int = 64,  # embedding width
        epochs: int = 30,  # passes over the train interactions
        lr: float = 0.01,  # Adam learning rate
        reg: float = 1e-4,  # L2 weight on the batch's user and item vectors
        batch_size: int = 1024,
        seed: int = 0,
        sparse_above: int = 100_000,  # users + items above which SparseAdam updates rows
    ) -> None:
        self.dim, self.epochs, self.lr, self.reg = dim, epochs, lr, reg
        self.batch_size, self.seed, self.sparse_above = batch_size, seed, sparse_above

    def fit(self, train: sp.csr_matrix, item_content: np.ndarray) -> BPRMF:
        """Train the factors with Adam; deterministic for a given seed."""
        with single_thread():
            return self._fit(train, item_content)

    def _fit(self, train: sp.csr_matrix, item_content: np.ndarray) -> BPRMF:
        binary, _ = check_inputs(train, item_content)
        n_users, n_items = binary.shape
        gen = torch.Generator().manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        user = torch.nn.Parameter(torch.randn(n_users, self.dim, generator=gen) * 0.05)
        item = torch.nn.Parameter(torch.randn(n_items, self.dim, generator=gen) * 0.05)
        sparse = n_users + n_items > self.sparse_above
        bias = torch.nn.Parameter(torch.zeros((n_items, 1) if sparse else n_items))
        # dense Adam updates every row each step: 46 s an epoch at 100k items + 50k users
        # on one thread; above `sparse_above` rows SparseAdam updates the batch's rows only
        make_opt = torch.optim.SparseAdam if sparse else torch.optim.Adam
        opt = make_opt([user, item, bias], lr=self.lr)
        users, items = _positive_pairs(binary)
        for _ in tqdm(range(self.epochs), desc="BPR-MF epochs", leave=False):
            order = rng.permutation(users.size)
            u_all, i_all = users[order], items[order]
            j_all = _sample_negatives(binary, u_all, rng)
            for start in _batches(users.size, self.batch_size):
                sl = slice(start, start + self.batch_size)
                u, i, j = (torch.from_numpy(a[sl]) for a in (u_all, i_all, j_all))
                if sparse:  # the same lookups with sparse gradients
                    pu, qi, qj = (F.embedding(idx, table, sparse=True)
                                  for idx, table in ((u, user), (i, item), (j, item)))  # fmt: skip
                    b_i, b_j = F.embedding(torch.stack([i, j]), bias, sparse=True)[..., 0]
                else:
                    pu, qi, qj, b_i, b_j = user[u], item[i], item[j], bias[i], bias[j]
                x = (pu * (qi - qj)).sum(dim=1) + b_i - b_j
                l2 = pu.pow(2).sum() + qi.pow(2).sum() + qj.pow(2).sum()
                loss = -F.logsigmoid(x).mean() + self.reg * l2 / u.numel()
                opt.zero_grad()
                loss.backward()
                opt.step()
            log.debug("BPR-MF loss %.4f", loss.item())
        self.user = user.detach().numpy().copy()
        self.item = item.detach().numpy().copy()
        self.bias = bias.detach().numpy().reshape(-1).copy()
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        """[len(users), I] float32: u . q_i + b_i."""
        users = _check_users(users, self.user.shape[0])
        return (self.user[users] @ self.item.T + self.bias[None, :]).astype(np.float32)


class LogisticRegression:
    """CTR logistic regression over sampled negatives.

    logit(u, i) = w0 + w_i + a . c_i + b . (p_u * c_i): an item-ID one-hot weight, the item
    content vector c_i and its element-wise product with the user profile p_u (mean content
    of the user's train items with text). In training, a positive's own vector is left out
    of p_u, as it will be for a held-out item, so the model cannot learn from a leak.
    Probabilities are calibrated to the 1 : n_neg sampling ratio, not to real traffic.
    """

    name = "LogReg"

    def __init__(
        self,
        epochs: int = 5,  # passes over the train interactions (10 scored no better on ML-100K)
        n_neg: int = 4,  # uniform negatives per positive
        lr: float = 0.01,  # Adam learning rate
        reg: float = 1e-5,  # L2 weight on the weights a batch touches
        batch_size: int = 4096,
        seed: int = 0,
    ) -> None:
        self.epochs, self.n_neg, self.lr, self.reg = epochs, n_neg, lr, reg
        self.batch_size, self.seed = batch_size, seed

    def fit(self, train: sp.csr_matrix, item_content: np.ndarray) -> LogisticRegression:
        """Fit the weights with Adam on positives and fresh negatives each epoch."""
        with single_thread():
            return self._fit(train, item_content)

    def _fit(self, train: sp.csr_matrix, item_content: np.ndarray) -> LogisticRegression:
        binary, content = check_inputs(train, item_content)
        rng = np.random.default_rng(self.seed)
        sums, n_text = user_profiles(binary, content)
        self.profiles = sums / np.maximum(n_text, 1.0)[:, None]
        self.content = content
        t = {
            "sums": torch.from_numpy(sums),
            "n_text": torch.from_numpy(n_text.astype(np.float32)),
            "content": torch.from_numpy(content),
            "has_text": torch.from_numpy((np.abs(content).sum(axis=1) > 0).astype(np.float32)),
        }
        shapes = (1, binary.shape[1], content.shape[1], content.shape[1])  # w0, w_item, a, b
        params = [torch.nn.Parameter(torch.zeros(n)) for n in shapes]
        opt = torch.optim.Adam(params, lr=self.lr)
        users, items = _positive_pairs(binary)
        for _ in tqdm(range(self.epochs), desc="LogReg epochs", leave=False):
            u_all = np.concatenate([users] + [users] * self.n_neg)
            neg = [_sample_negatives(binary, users, rng) for _ in range(self.n_neg)]
            i_all = np.concatenate([items, *neg])
            y_all = np.concatenate([np.ones(users.size), np.zeros(users.size * self.n_neg)])
            order = rng.permutation(u_all.size)
            u_all, i_all, y_all = u_all[order], i_all[order], y_all[order].astype(np.float32)
            for start in _batches(u_all.size, self.batch_size):
                sl = slice(start, start + self.batch_size)
                u, i, y = (torch.from_numpy(a[sl]) for a in (u_all, i_all, y_all))
                logit = self._train_logit(params, t, u, i, y)
                l2 = params[1][i].pow(2).sum() / u.numel() + params[2].pow(2).sum()
                l2 = l2 + params[3].pow(2).sum()
                loss = F.binary_cross_entropy_with_logits(logit, y) + self.reg * l2
                opt.zero_grad()
                loss.backward()
                opt.step()
            log.debug("LogReg loss %.4f", loss.item())
        self.w0, self.w_item, self.a, self.b = (p.detach().numpy().copy() for p in params)
        return self

    @staticmethod
    def _train_logit(
        params: list[torch.Tensor],
        t: dict[str, torch.Tensor],
        u: torch.Tensor,
        i: torch.Tensor,
        y: torch.Tensor,
    ) -> torch.Tensor:
        """Logits of a batch; a positive's own content is left out of its user's profile."""
        w0, w_item, a, b = params
        c = t["content"][i]
        own = y * t["has_text"][i]  # 1 where the item is a positive with text
        n_text = (t["n_text"][u] - own).clamp(min=1.0)
        profile = (t["sums"][u] - c * own[:, None]) / n_text[:, None]
        return w0 + w_item[i] + c @ a + (profile * c) @ b

    def score(self, users: np.ndarray) -> np.ndarray:
        """[len(users), I] float32 logits of every item."""
        users = _check_users(users, self.profiles.shape[0])
        item_part = self.w0 + self.w_item + self.content @ self.a
        return (item_part[None, :] + (self.profiles[users] * self.b) @ self.content.T).astype(
            np.float32
        )

    def predict_proba(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Click probability of each (users[n], items[n]) pair, float32 [n]."""
        users = _check_users(users, self.profiles.shape[0])
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        if items.shape != users.shape:
            raise ValueError(f"users and items must pair up: {users.size} vs {items.size}")
        if items.size and (items.min() < 0 or items.max() >= self.content.shape[0]):
            raise ValueError(f"item indices must lie in [0, {self.content.shape[0]})")
        c = self.content[items]
        logit = self.w0 + self.w_item[items] + c @ self.a + (self.profiles[users] * c) @ self.b
        return expit(logit).astype(np.float32)


def default_baselines(seed: int = 0) -> list[Recommender]:
    """The baselines of the evaluation table, in the order they are reported."""
    return [
        MostPopular(),
        BPRMF(seed=seed),
        LogisticRegression(seed=seed),
        ContentOnly(),
        EASE(),
    ]
