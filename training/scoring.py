"""Score users over the whole catalogue with a fusion model, in bounded memory. Import
only: training's early stopping (``ranking_metrics``) and ``training.evaluate``
(``fusion_scorers``) use it.

Full ranking scores every catalogue item for each user: items without training
interactions go through the unknown row plus their content, exactly as the server
scores a new item. Users are scored in chunks of ``TrainConfig.eval_batch_users``::

    device = pick_device("auto")  # CUDA when present, else CPU
    catalogue = catalogue_side(model, data, device)  # once per model state
    scores = score_users(model, data, users, device, catalogue=catalogue)  # [u, I] logits

Memory is bounded by the chunk, never by users x catalogue: the catalogue's content
projection ([I, d], ``catalogue_side``) is computed once per scoring pass, each user chunk
is encoded once (``FusionCTR.encode_user``), and the catalogue is then scored in slices
of ``TrainConfig.eval_pairs // users`` items (``FusionCTR.score_candidates``). The DIN
attention's [users, items, L, attention_dim] tensors, the largest of a forward pass, so
hold ``eval_pairs`` (user, item) pairs: about eval_pairs x L x attention_dim x 4 bytes
each (3.3 MB at the defaults), whatever the catalogue. What a chunk returns is
[users, I] float32 logits, the "chunk x catalogue" the metrics then rank.

Above ``TrainConfig.eval_shortlist`` items (2,000) the full model scores a shortlist:
each user's top N items by the logit's dot-product part (u + s).v (one [users, d] x
[d, I] product, what the catalogue softmax trains to rank), as a retrieval stage does in
front of a ranking model. Every other item keeps its order by (u + s).v below the
shortlist's lowest logit. The metrics at K <= N then rank exactly as the full model
would whenever its own top K lies inside the shortlist; the cost per user is I x d +
N full-model pairs instead of I full-model pairs (about 3 us each on one CPU thread):
100x less at 100k items with N = 2,000. docs/BENCHMARKS.md ("Evaluation at 100k and 1M
items") has how far the shortlisted metrics are from exact ones. ``eval_shortlist 0``
always ranks exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from scipy.special import expit
from torch import Tensor

from training import dataset as ds
from training.config import TrainConfig
from training.metrics import RankingAccumulator
from training.model import FusionCTR

# users [u] -> full-ranking scores [u, n_catalogue]
Scorer = Callable[[np.ndarray], np.ndarray]
# (users, items) pairs, each user repeated once per item -> click probabilities
ProbaFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Catalogue(NamedTuple):
    """The candidate side of every catalogue item, [I] / [I, d] on the scoring device:
    vocabulary index, projected content, train count and the gate-mixed item vector the
    dot-product part scores (``catalogue_side``)."""

    idx: Tensor
    proj: Tensor
    count: Tensor
    vec: Tensor


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU; ``cpu`` / ``cuda`` as named."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def item_chunk(n_users: int, pairs: int) -> int:
    """Items scored per forward pass for ``n_users`` users within ``pairs`` (user, item)
    pairs; at least one item, so a chunk larger than the budget still progresses."""
    return max(1, pairs // max(n_users, 1))


@torch.no_grad()
def catalogue_side(
    model: FusionCTR, data: ds.TrainingData, device: torch.device, rows: int = 65536
) -> Catalogue:
    """Project every catalogue item's content once, ``rows`` items at a time (the copy
    to the device is [rows, C], never [I, C]); valid until the model's weights change."""
    model.eval()
    side = ds.item_side(data, np.arange(data.n_catalogue), content=False)
    content = torch.from_numpy(data.content[: data.n_catalogue])  # a view, no copy
    proj = torch.cat(
        [model.content_proj(content[s : s + rows].to(device)) for s in range(0, len(content), rows)]
    )
    idx, count = side["item_idx"].to(device), side["item_count"].to(device)
    return Catalogue(idx, proj, count, model.item_repr(idx, proj, count))


@torch.no_grad()
def score_users(
    model: FusionCTR,
    data: ds.TrainingData,
    users: np.ndarray,
    device: torch.device,
    histories: np.ndarray | None = None,
    catalogue: Catalogue | None = None,
    pairs: int = TrainConfig.eval_pairs,
    shortlist: int = 0,
) -> np.ndarray:
    """Full-ranking scores [len(users), n_catalogue] (logits) of every catalogue item, with
    the users' training histories or ``histories`` ([n_users, L]) instead.

    The users are encoded once and the catalogue is scored ``item_chunk(len(users),
    pairs)`` items at a time; ``catalogue`` (``catalogue_side``) saves projecting the
    catalogue's content again on every call. The scores equal one forward pass over the
    whole catalogue (``model.score``) up to float rounding.
    """
    model.eval()
    catalogue = catalogue_side(model, data, device) if catalogue is None else catalogue
    hist = data.histories if histories is None else histories
    user = {k: v.to(device) for k, v in ds.user_side(data, users, hist[users]).items()}
    side = model.encode_user(
        user["user_idx"], user["hist_idx"], model.content_proj(user["hist_content"]),
        user["hist_mask"],
    )  # fmt: skip
    if 0 < shortlist < data.n_catalogue:
        return _score_shortlist(model, side, catalogue, shortlist, pairs)
    out = np.empty((len(users), data.n_catalogue), dtype=np.float32)
    step = item_chunk(len(users), pairs)
    for start in range(0, data.n_catalogue, step):
        sl = slice(start, start + step)
        logits = model.score_candidates(
            side, catalogue.idx[None, sl], catalogue.proj[None, sl], catalogue.count[None, sl]
        )
        out[:, sl] = logits.float().cpu().numpy()
    return out


def _score_shortlist(
    model: FusionCTR, side, catalogue: Catalogue, shortlist: int, pairs: int
) -> np.ndarray:
    """[users, I]: the full model's logits on each user's top ``shortlist`` items by
    (u + s).v; every other item below them, in (u + s).v order."""
    query = side.user if side.seq is None else side.user + side.seq
    dot = (query.squeeze(1) @ catalogue.vec.T).float()  # [u, I]
    top = torch.topk(dot, shortlist, dim=1).indices  # [u, N]
    full = torch.empty(top.shape, dtype=torch.float32, device=dot.device)
    step = item_chunk(len(top), pairs)
    for start in range(0, shortlist, step):
        cols = top[:, start : start + step]
        full[:, start : start + step] = model.score_candidates(
            side, catalogue.idx[cols], catalogue.proj[cols], catalogue.count[cols]
        ).float()
    low, high = dot.amin(dim=1, keepdim=True), dot.amax(dim=1, keepdim=True)
    # below the shortlist's lowest logit by 1 to 2, in (u + s).v order
    out = full.amin(dim=1, keepdim=True) - 2.0 + (dot - low) / (high - low).clamp_min(1e-9)
    out.scatter_(1, top, full)
    return out.cpu().numpy()


def ranking_metrics(
    model: FusionCTR,
    data: ds.TrainingData,
    holdout: ds.Holdout,
    config: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """Full-ranking metrics of the model on one holdout (RankingAccumulator), in chunks
    of ``eval_batch_users`` users x the catalogue."""
    acc = RankingAccumulator(data.train_counts, data.is_tail, k=config.k)
    catalogue = catalogue_side(model, data, device)
    for start in range(0, len(holdout.users), config.eval_batch_users):
        users = holdout.users[start : start + config.eval_batch_users]
        scores = score_users(model, data, users, device, None, catalogue, config.eval_pairs,
                             config.eval_shortlist)  # fmt: skip
        acc.add(scores, holdout.items[start : start + len(users)], holdout.exclude[users])
    return acc.result()


def fusion_scorers(
    model: FusionCTR,
    data: ds.TrainingData,
    config: TrainConfig,
    histories: np.ndarray | None = None,
) -> tuple[Scorer, ProbaFn]:
    """Full-ranking scorer and pairwise probability function of the fusion model. The
    catalogue's content is projected once, on the scorer's first call."""
    device = pick_device(config.device)
    model = model.to(device)
    cached: list[Catalogue] = []

    def score(users: np.ndarray) -> np.ndarray:
        if not cached:
            cached.append(catalogue_side(model, data, device))
        return score_users(model, data, users, device, histories, cached[0], config.eval_pairs,
                           config.eval_shortlist)  # fmt: skip

    @torch.no_grad()
    def proba(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Pairs come as each user repeated M = negatives + 1 times with its M items
        (``training.evaluate.evaluate_scorer``): [chunk users, M] pairs per call."""
        m = config.negatives + 1
        user, cand = users[::m], items.reshape(-1, m)
        side = ds.user_side(data, user, data.histories[user]) | ds.item_side(data, cand)
        logits = model.score(**{k: v.to(device) for k, v in side.items()})
        return expit(logits.float().cpu().numpy().ravel())

    return score, proba
