"""Long-tail re-ranking: a personalised xQuAD-style boost for tail items (pure functions).

The rule (docs/SERVING.md):

    score(i) = (1 - λ) · p(i) + λ · P(tail | u) · tail(i)

* ``p(i)`` is the model's click probability, ``tail(i)`` is 1 for a long-tail item;
* ``P(tail | u)`` is the user's appetite for the tail: the share of tail items in the
  user's history, Laplace-smoothed, ``(n_tail + 1) / (n + 2)`` (0.5 for a cold user);
* ``λ`` is the tail weight (server default, overridable per request), in [0, 1].

This is xQuAD's aspect term for the "tail" aspect with the user's own preference for it
(Abdollahpouri et al., 2019), applied once rather than greedily so a list's scores are
monotone in its order. λ = 0 ranks by click probability; λ = 1 puts tail items first for
any user, ordered among themselves by click probability. Ties break by probability, then
item id, so the order is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ranked:
    """The re-ranked order and per-item parts of the score (aligned with the input)."""

    order: np.ndarray  # int64 positions into the input, best first
    score: np.ndarray  # float32 final score per input item
    boost: np.ndarray  # float32 tail boost per input item (the λ·P(tail|u)·tail(i) part)
    p_tail: float  # P(tail | user) that was used


def tail_appetite(
    history_is_tail: Sequence[bool] | np.ndarray, real: np.ndarray | None = None
) -> float | np.ndarray:
    """P(tail | user): the Laplace-smoothed share of tail items in the user's history.

    One history [L] gives a float; a block [U, L] gives [U], with ``real`` [U, L] marking
    the slots that hold an item (padding is neither tail nor counted)."""
    flags = np.asarray(history_is_tail, dtype=bool)
    if real is not None:
        real = np.asarray(real, dtype=bool)
        flags = flags & real
    n = flags.shape[-1] if real is None else real.sum(axis=-1)
    share = (flags.sum(axis=-1) + 1.0) / (n + 2.0)
    return float(share) if np.ndim(share) == 0 else share


def rerank_scores(
    prob: np.ndarray, is_tail: np.ndarray, tail_weight: float, p_tail: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(score, boost) of the rule, float64, broadcasting: one user's [N] candidates, or a
    [U, I] block of users with ``p_tail`` of shape [U, 1] (offline evaluation)."""
    if not 0.0 <= tail_weight <= 1.0:
        raise ValueError(f"tail_weight must be in [0, 1], got {tail_weight}")
    boost = tail_weight * np.asarray(p_tail, dtype=np.float64) * np.asarray(is_tail, np.float64)
    return (1.0 - tail_weight) * np.asarray(prob, dtype=np.float64) + boost, boost


def rerank(
    prob: np.ndarray,
    is_tail: np.ndarray,
    item_ids: Sequence[str],
    tail_weight: float,
    p_tail: float,
) -> Ranked:
    """Apply the rule above; returns the order (best first) and the score parts."""
    prob = np.asarray(prob, dtype=np.float64)
    tail = np.asarray(is_tail, dtype=np.float64)
    if prob.shape != tail.shape or prob.shape[0] != len(item_ids):
        raise ValueError("prob, is_tail and item_ids must have the same length")
    score, boost = rerank_scores(prob, tail, tail_weight, p_tail)
    # lexsort: the last key is the primary one (score desc, then prob desc, then id asc).
    # The id key only decides between equal (score, prob) pairs, and building a string
    # array costs more than the sort: sort by the numbers, and by ids only on a tie.
    order = np.lexsort((-prob, -score))
    if len(order) > 1:
        ranked_score, ranked_prob = score[order], prob[order]
        tied = (ranked_score[1:] == ranked_score[:-1]) & (ranked_prob[1:] == ranked_prob[:-1])
        if tied.any():
            order = np.lexsort((np.asarray(item_ids, dtype=str), -prob, -score))
    return Ranked(
        order.astype(np.int64), score.astype(np.float32), boost.astype(np.float32), p_tail
    )


def tail_share(is_tail: np.ndarray, order: np.ndarray) -> float:
    """Share of tail items among those returned (for the metrics)."""
    return float(np.asarray(is_tail, dtype=bool)[order].mean()) if len(order) else 0.0
