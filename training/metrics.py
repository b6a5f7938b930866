"""Full-ranking and long-tail metrics of tailrank's evaluation protocol (DESIGN.md), at K.

Imported by ``python -m training.evaluate``; tested by ``pytest tests/test_metrics.py``.

Every user's held-out target is ranked against all items minus the user's excluded items
(train items, and for test the validation item). Scores arrive in chunks of users, so a
catalogue of any size is evaluated with bounded memory: every array ``add`` builds is
[chunk users, I] or smaller (about 40 bytes per cell at the peak, with the float32 scores)::

    acc = RankingAccumulator(train_counts, is_tail, k=10)
    for users in chunks:
        acc.add(model.score(users), targets[users], exclude[users])
    acc.result()  # {"HR@10": ..., "NDCG@10": ..., ...}

Rules, chosen so that no model gains from a degenerate score:
- **Ties go against the target.** The target's 0-based rank is the number of other
  non-excluded items whose score is greater than OR EQUAL to its own, so a constant scorer
  never hits. Top-K lists (APLT, Coverage, Gini, ARP) break ties the same way: items above
  the K-th score first, then tied non-target items by ascending item index, then targets.
  A target is therefore in the list exactly when its rank is < K. ``target_ranks`` is
  the one implementation of this rule; ``RankingAccumulator.add`` returns its ranks so a
  caller counts hits on a subset (evaluation's ColdHR) without ranking again.
- **NaN scores count as -inf** (the worst possible score); how many there were is
  reported as ``n_nan_scores`` and logged.
- **A target inside its own exclusion mask is not masked** (the data has a repeat
  interaction); such cases are counted in ``n_target_excluded`` and logged.
- MRR is MRR@K: 1 / (rank + 1) when rank < K, else 0. NDCG is 1 / log2(rank + 2) under the
  same cut (one relevant item, so the ideal DCG is 1).
- APLT and ARP average per-list values over users; Gini is over the exposure counts of
  all I items (zeros included): 0 = equal exposure, (I - 1) / I = one item gets it all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
from scipy.stats import rankdata

from core.schema import gini

log = logging.getLogger(__name__)

LOGLOSS_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before the log


def _as_valid(scores: np.ndarray, exclude: sp.spmatrix, n_items: int) -> tuple:
    """Check shapes; return (float64 scores with NaN/excluded at -inf, valid mask, n_nan)."""
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape[1] != n_items:
        raise ValueError(
            f"scores must have shape [users, {n_items}] (one column per catalogue item), "
            f"got {scores.shape}"
        )
    if not sp.issparse(exclude) or exclude.shape != scores.shape:
        raise ValueError(
            f"exclude must be a scipy.sparse matrix of shape {scores.shape} (the users' train "
            f"items), got {type(exclude).__name__} {getattr(exclude, 'shape', None)}"
        )
    s = scores.astype(np.float64, copy=True)
    nan = np.isnan(s)
    n_nan = int(nan.sum())
    s[nan] = -np.inf
    valid = np.ones(s.shape, dtype=bool)
    coo = sp.coo_matrix(exclude)
    keep = coo.data != 0
    valid[coo.row[keep], coo.col[keep]] = False
    return s, valid, n_nan


def target_ranks(s: np.ndarray, valid: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target: how many other valid items score greater than
    or equal to it (ties against the target). ``s`` and ``valid`` come from ``_as_valid``
    (NaN already -inf, excluded items invalid); each target is made valid in place (a
    repeat interaction stays rankable), as the top-K lists built from ``valid`` need."""
    rows = np.arange(s.shape[0])
    valid[rows, targets] = True
    return (valid & (s >= s[rows, targets][:, None])).sum(axis=1) - 1


def top_k_mask(s: np.ndarray, valid: np.ndarray, k: int, against: np.ndarray) -> np.ndarray:
    """Boolean [u, I] mask of each row's top-k valid items.

    Ties at the K-th score are filled with non-``against`` items by ascending index first,
    then ``against`` items (the targets), so ties never favour a target. A row with fewer
    than k valid items gets all of them. ``s`` must hold no NaN.
    """
    n_items = s.shape[1]
    kk = min(k, n_items)
    ranked = np.where(valid, s, -np.inf)
    kth = np.partition(ranked, n_items - kk, axis=1)[:, n_items - kk][:, None]
    chosen = valid & (ranked > kth)
    need = kk - chosen.sum(axis=1, keepdims=True)
    tied = valid & (ranked == kth)
    for group in (tied & ~against, tied & against):
        take = group & (np.cumsum(group, axis=1, dtype=np.int32) <= need)
        chosen |= take
        need = need - take.sum(axis=1, keepdims=True)
    return chosen


class RankingAccumulator:
    """Accumulates leave-one-out full-ranking metrics over chunks of users."""

    def __init__(self, train_counts: np.ndarray, is_tail: np.ndarray, k: int = 10) -> None:
        self.train_counts = np.asarray(train_counts, dtype=np.float64)
        self.is_tail = np.asarray(is_tail).astype(bool)
        if self.train_counts.ndim != 1 or self.train_counts.shape != self.is_tail.shape:
            raise ValueError(
                "train_counts and is_tail must both be 1-D with one entry per item, got "
                f"{self.train_counts.shape} and {self.is_tail.shape}"
            )
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)
        self.n_items = self.train_counts.size
        self.exposure = np.zeros(self.n_items, dtype=np.int64)
        self._sums = dict.fromkeys(
            ("hit", "ndcg", "mrr", "tail_hit", "head_hit", "aplt", "arp"), 0.0
        )
        self._counts = dict.fromkeys(
            ("users", "tail", "head", "lists", "nan", "target_excluded"), 0
        )

    def add(self, scores: np.ndarray, targets: np.ndarray, exclude: sp.spmatrix) -> np.ndarray:
        """Add one chunk: scores [u, I], target item column per user [u], exclude [u, I].

        Returns each target's 0-based rank under the module's rules (``target_ranks``), so
        a caller can count hits on a subset of cases (evaluation's ColdHR) by the same rule.
        """
        targets = np.asarray(targets, dtype=np.int64).reshape(-1)
        s, valid, n_nan = _as_valid(scores, exclude, self.n_items)
        if targets.shape[0] != s.shape[0]:
            raise ValueError(f"targets has {targets.shape[0]} entries for {s.shape[0]} rows")
        if targets.size and (targets.min() < 0 or targets.max() >= self.n_items):
            raise ValueError(f"targets must be item columns in [0, {self.n_items})")
        rows = np.arange(s.shape[0])
        n_target_excluded = int((~valid[rows, targets]).sum())
        rank = target_ranks(s, valid, targets)
        hit = rank < self.k
        tail = self.is_tail[targets]
        against = np.zeros(s.shape, dtype=bool)
        against[rows, targets] = True
        lists = top_k_mask(s, valid, self.k, against)
        self._accumulate(hit, rank, tail, lists)
        self._counts["nan"] += n_nan
        self._counts["target_excluded"] += n_target_excluded
        if n_nan:  # a model fault: loud
            log.warning("chunk of %d users: %d NaN scores ranked as -inf", s.shape[0], n_nan)
        if n_target_excluded:  # repeat interactions, a property of the data: counted in
            log.debug(  # the result (n_target_excluded), not logged per chunk
                "chunk of %d users: %d targets inside their own exclusion mask kept rankable",
                s.shape[0], n_target_excluded,
            )  # fmt: skip
        return rank

    def _accumulate(
        self, hit: np.ndarray, rank: np.ndarray, tail: np.ndarray, lists: np.ndarray
    ) -> None:
        """Add one chunk's per-user hits and top-K lists to the running sums."""
        sums, counts = self._sums, self._counts
        sums["hit"] += float(hit.sum())
        sums["ndcg"] += float(np.sum(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)))
        sums["mrr"] += float(np.sum(np.where(hit, 1.0 / (rank + 1.0), 0.0)))
        sums["tail_hit"] += float(hit[tail].sum())
        sums["head_hit"] += float(hit[~tail].sum())
        counts["users"] += hit.size
        counts["tail"] += int(tail.sum())
        counts["head"] += int((~tail).sum())
        # per-list sums over the u x K listed cells only: no further [u, I] array
        rows, cols = np.nonzero(lists)
        length = np.bincount(rows, minlength=hit.size)
        nonempty = length > 0
        counts["lists"] += int(nonempty.sum())
        n_tail = np.bincount(rows, weights=self.is_tail[cols], minlength=hit.size)
        pop = np.bincount(rows, weights=self.train_counts[cols], minlength=hit.size)
        sums["aplt"] += float(np.sum(n_tail[nonempty] / length[nonempty]))
        sums["arp"] += float(np.sum(pop[nonempty] / length[nonempty]))
        self.exposure += np.bincount(cols, minlength=self.n_items)

    def result(self) -> dict[str, float]:
        """Metrics at K over every user added so far (NaN where a group is empty)."""
        s, c, k = self._sums, self._counts, self.k

        def ratio(num: float, den: int) -> float:
            return float(num / den) if den else float("nan")

        return {
            f"HR@{k}": ratio(s["hit"], c["users"]),
            f"NDCG@{k}": ratio(s["ndcg"], c["users"]),
            f"MRR@{k}": ratio(s["mrr"], c["users"]),
            f"TailHR@{k}": ratio(s["tail_hit"], c["tail"]),
            f"HeadHR@{k}": ratio(s["head_hit"], c["head"]),
            f"APLT@{k}": ratio(s["aplt"], c["lists"]),
            f"Coverage@{k}": ratio(float((self.exposure > 0).sum()), self.n_items),
            f"Gini@{k}": gini(self.exposure),
            f"ARP@{k}": ratio(s["arp"], c["lists"]),
            "n_users": float(c["users"]),
            "n_tail_cases": float(c["tail"]),
            "n_head_cases": float(c["head"]),
            "n_nan_scores": float(c["nan"]),
            "n_target_excluded": float(c["target_excluded"]),
        }


def evaluate_scorer(
    score: Callable[[np.ndarray], np.ndarray],
    users: np.ndarray,
    targets: np.ndarray,
    exclude: sp.csr_matrix,
    train_counts: np.ndarray,
    is_tail: np.ndarray,
    k: int = 10,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Full-ranking metrics of ``score(users) -> [u, I]`` over users in chunks.

    ``exclude`` has one row per entry of ``users`` (row n masks users[n]'s items). Memory
    is about 30 bytes x chunk_size x I.
    """
    users = np.asarray(users, dtype=np.int64)
    acc = RankingAccumulator(train_counts, is_tail, k=k)
    for start in range(0, users.size, chunk_size):
        sl = slice(start, start + chunk_size)
        acc.add(score(users[sl]), np.asarray(targets)[sl], exclude[sl])
    return acc.result()


def ctr_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC (ties count half) and log-loss (probs clipped to [1e-7, 1 - 1e-7]) of a CTR head.

    AUC is NaN, with a warning, when the labels hold only one class.
    """
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"labels and probs must be non-empty and equal-length: {y.size}, {p.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(p).any():
        raise ValueError(f"probs hold {int(np.isnan(p).sum())} NaN values: fix the model output")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        log.warning("AUC undefined: labels hold only one class (%d positives)", n_pos)
        auc = float("nan")
    else:
        ranks = rankdata(p)  # average ranks: a tie between a positive and a negative counts 1/2
        auc = float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    q = np.clip(p, LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    logloss = float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
    return {"AUC": auc, "LogLoss": logloss, "n_pairs": float(y.size)}


def set_metrics_at_k(
    scores: np.ndarray,
    target_sets: list[np.ndarray],
    exclude: sp.spmatrix,
    k: int = 10,
) -> dict[str, float]:
    """Precision, Recall and F1 at k for users with several held-out items.

    Per user: Precision = hits / k, Recall = hits / |targets|, F1 = their harmonic mean
    (0 when no hit); each is averaged over users with a non-empty target set. Ties go
    against the targets, NaN scores count as -inf, targets are never masked.
    """
    s, valid, n_nan = _as_valid(scores, exclude, np.asarray(scores).shape[-1])
    if len(target_sets) != s.shape[0]:
        raise ValueError(f"target_sets has {len(target_sets)} entries for {s.shape[0]} rows")
    is_target = np.zeros(s.shape, dtype=bool)
    for row, items in enumerate(target_sets):
        is_target[row, np.asarray(items, dtype=np.int64)] = True
    valid |= is_target
    if n_nan:
        log.warning("%d NaN scores ranked as -inf", n_nan)
    hits = (top_k_mask(s, valid, k, is_target) & is_target).sum(axis=1)
    n_targets = is_target.sum(axis=1)
    used = n_targets > 0
    precision = hits[used] / k
    recall = hits[used] / n_targets[used]
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    mean = (lambda x: float(x.mean())) if used.any() else (lambda x: float("nan"))
    return {
        f"Precision@{k}": mean(precision),
        f"Recall@{k}": mean(recall),
        f"F1@{k}": mean(f1),
        "n_users": float(used.sum()),
    }
