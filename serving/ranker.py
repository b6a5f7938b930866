"""The Rank pipeline below the gRPC layer: gather features -> model feed -> ONNX -> re-rank.

``Ranker.rank`` takes a validated request (``RankArgs``) and returns a ``Ranking``: the
scored candidates in their final order with every part of their score, the candidates
it could not score, and whether the user was cold. It knows nothing of gRPC; the
servicer validates before and builds the response after, so a request flows one way:
servicer -> ranker -> (features, model, core.rerank) -> servicer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core import contract, rerank
from serving import metrics
from serving.features import FeatureClient, ItemRows
from serving.inference import Model
from serving.itemtable import ItemTable


@dataclass(frozen=True)
class RankArgs:
    """A validated Rank request."""

    user_id: str
    candidates: list[str]
    top_k: int
    tail_weight: float
    request_id: str
    explain: bool


@dataclass(frozen=True)
class Ranking:
    """A ranked list: arrays aligned with ``ids`` (final order, cut to top_k)."""

    cold_user: bool  # the feature store does not know the user
    unscored: list[str]  # candidates the feature store does not hold
    ids: list[str]
    score: np.ndarray  # float32, after re-ranking
    prob: np.ndarray  # float32, the model's click probability
    logit: np.ndarray  # float32
    boost: np.ndarray  # float32, the re-ranker's tail term
    is_tail: np.ndarray  # bool
    p_tail: float  # the user's appetite for the tail (core.rerank.tail_appetite)
    # with explain: per ranked item, the history items its attention weighed most
    because: list[list[tuple[str, float]]] | None = None


@dataclass(frozen=True)
class Gathered:
    """What a Rank request read: the user's history and the item rows of the N candidates
    followed by the L history items (one table gather)."""

    cold: bool  # the user is unknown to the feature store
    n: int  # candidates: rows[:n] are the candidates, rows[n:] the history, oldest first
    rows: ItemRows
    scored: np.ndarray  # int64 positions of the candidates Feast knows


class Ranker:
    """Ranks candidates for a user with a FeatureClient and a Model."""

    def __init__(
        self,
        features: FeatureClient,
        model: Model,
        item_cache: bool = True,
        table: ItemTable | None = None,
    ) -> None:
        self.features = features
        self.model = model
        self.item_cache = item_cache
        self.table = table  # the item table built for this model; None: the client's current

    def rank(self, args: RankArgs) -> Ranking:
        got = self.gather(args)
        candidates, n, rows = args.candidates, got.n, got.rows
        unscored = [candidates[i] for i in np.flatnonzero(~rows.known[:n])]
        ids = candidates if len(got.scored) == n else [candidates[i] for i in got.scored]
        if not ids:
            empty = np.zeros(0, np.float32)
            return Ranking(
                got.cold, unscored, [], empty, empty, empty, empty, empty.astype(bool), 0.5
            )
        feed = self.feed(args.user_id, got)
        weights = None
        if args.explain:
            logit, prob, weights = self.model.score_explained(feed)
            if weights is not None and weights.shape[-1] != len(rows.ids) - n:
                weights = None  # not the graph's contract: no explanation rather than a wrong one
        else:
            logit, prob = self.model.score(feed)
        p_tail = rerank.tail_appetite(rows.is_tail[n:][rows.known[n:]])
        tail = rows.is_tail[got.scored]
        ranked = rerank.rerank(prob, tail, ids, args.tail_weight, p_tail)
        order = ranked.order[: args.top_k] if args.top_k else ranked.order
        return Ranking(
            cold_user=got.cold, unscored=unscored, ids=[ids[j] for j in order],
            score=ranked.score[order], prob=prob[order], logit=logit[order],
            boost=ranked.boost[order], is_tail=tail[order], p_tail=float(p_tail),
            because=None if weights is None else [
                influences(weights[j], rows.ids[n:]) for j in order
            ],
        )  # fmt: skip

    def gather(self, args: RankArgs) -> Gathered:
        """The user's history from Feast, then the rows of candidates + history items."""
        history = self.features.user_history(args.user_id)
        hist = (history or [])[-self.model.history_len :]
        lookup = [*args.candidates, *hist]
        rows, fetched = self.features.items(
            lookup, self.model.item_index, self.item_cache, self.table
        )
        # counted per distinct id, as one lookup each (a history item may be a candidate)
        metrics.CACHE_HITS.inc(len(set(lookup)) - fetched)
        metrics.CACHE_MISSES.inc(fetched)
        n = len(args.candidates)
        return Gathered(history is None, n, rows, np.flatnonzero(rows.known[:n]))

    def feed(self, user_id: str, got: Gathered) -> dict[str, np.ndarray]:
        """The model feed for the user and the scored candidates (core.contract.build_feed):
        slices and one gather of the rows, no per-id work."""
        n, rows, scored = got.n, got.rows, got.scored
        hist_idx = rows.vocab_idx[n:]
        pick = slice(0, n) if len(scored) == n else scored  # a slice is a view, no copy
        return contract.build_feed(
            user_idx=self.model.user_index.get(user_id, 0),
            hist_idx=hist_idx,
            hist_content=rows.content[n:],
            # a history item counts when Feast (content) or the vocabulary (id) knows it
            hist_mask=rows.known[n:] | (hist_idx > 0),
            item_idx=rows.vocab_idx[pick],
            item_content=rows.content[pick],
            item_count=rows.count[pick],
        )


def influences(weights: np.ndarray, history: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` history items with the most attention weight for one candidate (an item
    held twice adds up), heaviest first; items of weight 0 (padding, unknown) left out."""
    total: dict[str, float] = {}
    for item, weight in zip(history, weights.tolist(), strict=True):
        if weight > 0:
            total[item] = total.get(item, 0.0) + weight
    return sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
