"""Score users over the whole catalogue with a fusion model. Import only: training's
early stopping (``ranking_metrics``) and ``training.evaluate`` (``fusion_scorers``) use it.

Full ranking scores every catalogue item for each user: items without training
interactions go through the unknown row plus their content, exactly as the server
scores a new item. Users are scored in chunks of ``TrainConfig.eval_batch_users``::

    device = pick_device("auto")  # CUDA when present, else CPU
    scores = score_users(model, data, users, device)  # [len(users), n_catalogue] logits
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.special import expit

from training import dataset as ds
from training.config import TrainConfig
from training.metrics import RankingAccumulator
from training.model import FusionCTR

# users [u] -> full-ranking scores [u, n_catalogue]
Scorer = Callable[[np.ndarray], np.ndarray]
# (users, items) pairs, each user repeated once per item -> click probabilities
ProbaFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU; ``cpu`` / ``cuda`` as named."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@torch.no_grad()
def score_users(
    model: FusionCTR,
    data: ds.TrainingData,
    users: np.ndarray,
    device: torch.device,
    histories: np.ndarray | None = None,
) -> np.ndarray:
    """Full-ranking scores [len(users), n_catalogue] (logits) of every catalogue item, with
    the users' training histories or ``histories`` ([n_users, L]) instead."""
    model.eval()
    items = np.arange(data.n_catalogue)[None, :]
    cand = {k: v.to(device) for k, v in ds.item_side(data, items).items()}
    hist = data.histories if histories is None else histories
    user = ds.user_side(data, users, hist[users])
    user = {k: v.to(device) for k, v in user.items()}
    return model.score(**user, **cand).float().cpu().numpy()


def ranking_metrics(
    model: FusionCTR,
    data: ds.TrainingData,
    holdout: ds.Holdout,
    config: TrainConfig,
    device: torch.device,
) -> dict[str, float]:
    """Full-ranking metrics of the model on one holdout (RankingAccumulator)."""
    acc = RankingAccumulator(data.train_counts, data.is_tail, k=config.k)
    for start in range(0, len(holdout.users), config.eval_batch_users):
        users = holdout.users[start : start + config.eval_batch_users]
        scores = score_users(model, data, users, device)
        acc.add(scores, holdout.items[start : start + len(users)], holdout.exclude[users])
    return acc.result()


def fusion_scorers(
    model: FusionCTR,
    data: ds.TrainingData,
    config: TrainConfig,
    histories: np.ndarray | None = None,
) -> tuple[Scorer, ProbaFn]:
    """Full-ranking scorer and pairwise probability function of the fusion model."""
    device = pick_device(config.device)
    model = model.to(device)

    def score(users: np.ndarray) -> np.ndarray:
        return score_users(model, data, users, device, histories)

    @torch.no_grad()
    def proba(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Pairs come as each user repeated M = negatives + 1 times with its M items
        (``training.evaluate.evaluate_scorer``)."""
        m = config.negatives + 1
        user, cand = users[::m], items.reshape(-1, m)
        side = ds.user_side(data, user, data.histories[user]) | ds.item_side(data, cand)
        logits = model.score(**{k: v.to(device) for k, v in side.items()})
        return expit(logits.float().cpu().numpy().ravel())

    return score, proba
