"""The Rank pipeline below the gRPC layer: gather features -> model feed -> ONNX -> re-rank.

``Ranker.rank`` takes a validated request (``RankArgs``) and returns a ``Ranking``: the
scored candidates in their final order with every part of their score, the candidates
it could not score, and whether the user was cold. It knows nothing of gRPC; the
servicer validates before and builds the response after, so a request flows one way:
servicer -> ranker -> (features, model, core.rerank) -> servicer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core import contract, rerank
from serving import metrics
from serving.features import FeatureClient, ItemRows
from serving.inference import Model


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


@dataclass(frozen=True)
class Gathered:
    """What a Rank request read: history and item rows (candidates first, then history)."""

    cold: bool  # the user is unknown to the feature store
    hist: list[str]  # the last history_len history item ids, oldest first
    rows: ItemRows  # candidates, then history items not among them
    hist_rows: np.ndarray  # int64 row in ``rows`` of each history item
    scored: np.ndarray  # int64 positions of the candidates Feast knows


class Ranker:
    """Ranks candidates for a user with a FeatureClient and a Model."""

    def __init__(self, features: FeatureClient, model: Model, item_cache: bool = True) -> None:
        self.features = features
        self.model = model
        self.item_cache = item_cache

    def rank(self, args: RankArgs) -> Ranking:
        got = self.gather(args)
        candidates = args.candidates
        unscored = [candidates[i] for i in np.flatnonzero(~got.rows.known[: len(candidates)])]
        ids = [candidates[i] for i in got.scored]
        if not ids:
            empty = np.zeros(0, np.float32)
            return Ranking(
                got.cold, unscored, [], empty, empty, empty, empty, empty.astype(bool), 0.5
            )
        logit, prob = self.model.score(self.feed(args.user_id, got))
        hist_known = got.rows.known[got.hist_rows]
        p_tail = rerank.tail_appetite(got.rows.is_tail[got.hist_rows][hist_known])
        tail = got.rows.is_tail[got.scored]
        ranked = rerank.rerank(prob, tail, ids, args.tail_weight, p_tail)
        order = ranked.order[: args.top_k] if args.top_k else ranked.order
        return Ranking(
            cold_user=got.cold, unscored=unscored, ids=[ids[j] for j in order],
            score=ranked.score[order].astype(np.float32), prob=prob[order], logit=logit[order],
            boost=np.asarray(ranked.boost, np.float32)[order], is_tail=tail[order],
            p_tail=float(p_tail),
        )  # fmt: skip

    def gather(self, args: RankArgs) -> Gathered:
        """The user's history from Feast, then candidate + history item rows (cache first)."""
        history = self.features.user_history(args.user_id)
        hist = (history or [])[-self.model.history_len :]
        wanted = set(args.candidates)
        lookup = args.candidates + [h for h in dict.fromkeys(hist) if h not in wanted]
        rows, hits = self.features.items(lookup, use_cache=self.item_cache)
        metrics.CACHE_HITS.inc(hits)
        metrics.CACHE_MISSES.inc(len(lookup) - hits)
        where = {item: i for i, item in enumerate(lookup)}
        hist_rows = np.array([where[h] for h in hist], dtype=np.int64)
        scored = np.flatnonzero(rows.known[: len(args.candidates)])
        return Gathered(history is None, hist, rows, hist_rows, scored)

    def feed(self, user_id: str, got: Gathered) -> dict[str, np.ndarray]:
        """The model feed for the user and the scored candidates (core.contract.build_feed)."""
        index, rows = self.model.item_index, got.rows
        hist_idx = np.array([index.get(h, 0) for h in got.hist], dtype=np.int64)
        # a history item counts when Feast (content) or the vocabulary (id) knows it
        hist_mask = rows.known[got.hist_rows] | (hist_idx > 0)
        return contract.build_feed(
            user_idx=self.model.user_index.get(user_id, 0),
            hist_idx=hist_idx,
            hist_content=rows.content[got.hist_rows],
            hist_mask=hist_mask,
            item_idx=np.array([index.get(rows.ids[i], 0) for i in got.scored], dtype=np.int64),
            item_content=rows.content[got.scored],
            item_count=rows.count[got.scored],
        )
