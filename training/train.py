"""Train the fusion CTR model: negative sampling, early stopping on validation NDCG@10.

Run::

    python -m training.train --data data/movielens-100k \\
        --features feature_repo/data/movielens-100k \\
        --mode deploy --out artifacts/movielens-100k [--epochs 20 --sampler uniform ...]

Every training interaction (u, i at time t) is a positive whose history is the user's
items before t (causal, last `history_len`); it gets `negatives` sampled items:

- `uniform`: negatives drawn uniformly from the item vocabulary;
- `popularity`: drawn with q(j) ~ count(j)^pop_alpha. Popular items then appear as
  negatives more often than under uniform sampling, which biases the learned score
  against them. The log-Q correction (as in NCE / sampled softmax, Yi et al. 2019)
  removes that bias: the loss sees logit(u, j) - w * log(q(j) * n_items) for the positive
  and the negatives, i.e. the log-ratio of q to the uniform distribution, so the model's
  raw logit estimates the same quantity as under uniform sampling. w = `logq_weight`
  (0 keeps the tail-favouring bias on purpose, 1 removes it).
The default (`uniform`) was chosen on MovieLens-100K validation NDCG@10 (see
docs/BENCHMARKS.md).

The loss (`loss`) sees the (corrected) logits of each positive and its negatives:

- `bce`: binary cross-entropy per candidate (1 for the positive, 0 for each negative), so
  the logit is a click log-odds against `negatives` sampled items per positive;
- `softmax`: sampled softmax, the cross-entropy of the positive against its own
  negatives (listwise, closer to the full-ranking task). It fixes logits only up to a
  shift per (user, history), so `bce_weight` > 0 adds the BCE term with that weight to
  keep `prob` = sigmoid(logit) usable as a click probability.

On top of that loss, `catalogue_softmax` (weight, default 1) adds a full-catalogue
softmax: the cross-entropy of each positive against EVERY vocabulary item, on the
model's dot-product part (u + s).v (`FusionCTR.catalogue_logits`; s is the sequence
encoder's state). Full ranking asks the model to put the next item above all 1-2k
others, popular ones above all, which a handful of random negatives never shows it; on a
catalogue of this size the whole softmax is one [B, d] x [d, I] product per step. The
same `id_dropout` share of the catalogue is shown there as new items (unknown row,
count 0) each step, so content-only items learn to compete with the whole catalogue.
The BCE term stays: it is what keeps `prob` a click probability. Its cost grows with the
catalogue: [batch, items] logits per step (512 x 100k items is 0.2 GB and about 5 GFLOP
with the backward pass); far larger catalogues want a sampled softmax there instead.

Options: `history_skip` ends that share of training histories one item early (the model
then also learns from stale histories, as when the feature store lags behind);
`lr_schedule` = cosine decays the learning rate per step to 0 at `epochs`.

Seeded; tqdm progress; TensorBoard logs under <out>/tensorboard; CPU by default, CUDA when
present. Writes <out>/checkpoint.pt (best epoch), config.json, vocab.json and
train_summary.json (`training.checkpoint`). Training never evaluates: evaluation on the
test split is the caller's next step::

    python -m training.train --data data/ml --features data/ml/features_eval \\
        --mode eval --out artifacts/ml-eval
    python -m training.evaluate --run artifacts/ml-eval
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from core import schema
from core.files import write_json_atomic
from training import dataset as ds
from training.checkpoint import save_checkpoint, save_config
from training.config import TrainConfig, add_config_arguments, config_from_args
from training.model import MASK_VALUE, FusionCTR, UserSide, build_model
from training.scoring import pick_device, ranking_metrics

log = logging.getLogger(__name__)
SUMMARY_FILE = "train_summary.json"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sampling_distribution(data: ds.TrainingData, config: TrainConfig) -> np.ndarray:
    """q over catalogue items: only items with training interactions can be negatives."""
    counts = data.train_counts.astype(np.float64)
    q = (counts > 0).astype(np.float64)
    if config.sampler == "popularity":
        q = np.power(counts, config.pop_alpha) * (counts > 0)
    return q / q.sum()


def make_batch(
    data: ds.TrainingData,
    events: np.ndarray,
    q: np.ndarray,
    config: TrainConfig,
    rng: np.random.Generator,
) -> ds.Batch:
    """Positives for `events` plus sampled negatives, with ID dropout applied."""
    users = data.train_users[events]
    skip = 0  # history_skip: some histories end one item early (no draw when off)
    if config.history_skip:
        skip = (rng.random(len(events)) < config.history_skip).astype(np.int64)
    hist = ds.causal_histories(data, events, config.history_len, skip)
    negs = rng.choice(len(q), size=(len(events), config.negatives), p=q)
    cands = np.concatenate([data.train_items[events][:, None], negs], axis=1)
    labels = np.zeros(cands.shape, dtype=np.float32)
    labels[:, 0] = 1.0
    logq = np.log(q[cands] * np.count_nonzero(q) + 1e-12) * config.logq_weight
    if config.sampler == "uniform":
        logq = np.zeros_like(logq)
    rows, inverse = np.unique(np.concatenate([hist.ravel(), cands.ravel()]), return_inverse=True)
    batch = ds.Batch(
        **ds.user_side(data, users, hist, content=False),
        **ds.item_side(data, cands, content=False),
        labels=torch.from_numpy(labels),
        logq=torch.from_numpy(logq.astype(np.float32)),
        content_table=torch.from_numpy(data.content[rows]),
    )
    batch.hist_content = torch.from_numpy(inverse[: hist.size].reshape(hist.shape))
    batch.item_content = torch.from_numpy(inverse[hist.size :].reshape(cands.shape))
    return id_dropout(batch, config, rng)


def id_dropout(batch: ds.Batch, config: TrainConfig, rng: np.random.Generator) -> ds.Batch:
    """Turn some items into "unknown, count 0" and some users into the unknown user."""
    drop = torch.from_numpy(rng.random(tuple(batch.item_idx.shape)) < config.id_dropout)
    batch.item_idx = batch.item_idx.masked_fill(drop, 0)
    batch.item_count = batch.item_count.masked_fill(drop, 0.0)
    drop_h = torch.from_numpy(rng.random(tuple(batch.hist_idx.shape)) < config.id_dropout)
    batch.hist_idx = batch.hist_idx.masked_fill(drop_h, 0)
    drop_u = torch.from_numpy(rng.random(tuple(batch.user_idx.shape)) < config.user_dropout)
    batch.user_idx = batch.user_idx.masked_fill(drop_u, 0)
    return batch


def training_loss(logits: torch.Tensor, labels: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """The configured loss on (log-Q corrected) logits [B, M] whose column 0 is the positive."""
    bce = F.binary_cross_entropy_with_logits(logits, labels)
    if config.loss == "bce":
        return bce
    softmax = F.cross_entropy(logits, labels.argmax(dim=1))
    return softmax + config.bce_weight * bce if config.bce_weight else softmax


def vocab_content(data: ds.TrainingData) -> torch.Tensor:
    """[n_items + 1, C] content by vocabulary index (row 0, the unknown item, is zeros)."""
    rows = np.full(len(data.item_vocab) + 1, data.pad, dtype=np.int64)
    known = data.item_to_vocab[:-1] > 0
    rows[data.item_to_vocab[:-1][known]] = np.flatnonzero(known)
    return torch.from_numpy(data.content[rows])


def catalogue_loss(
    model: FusionCTR,
    side: UserSide,
    vocab_proj: torch.Tensor,
    targets: torch.Tensor,
    drop: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of each positive against every vocabulary item, on (u + s).v.

    The sampled BCE of `training_loss` only contrasts a positive with a few random items,
    mostly unpopular ones; full ranking asks the model to beat every item, popular ones
    above all. With 1-2k items the whole catalogue is one [B, d] x [d, I] product.
    """
    full = model.catalogue_logits(side, vocab_proj, drop)
    unknown = torch.zeros(full.shape[1], dtype=torch.bool, device=full.device)
    unknown[0] = True  # the reserved row is never a target
    return F.cross_entropy(full.masked_fill(unknown, MASK_VALUE), targets)


def steps_per_epoch(data: ds.TrainingData, config: TrainConfig) -> int:
    steps = int(np.ceil(len(data.train_items) / config.batch_size))
    return min(steps, config.max_steps_per_epoch) if config.max_steps_per_epoch else steps


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-step learning-rate schedule: None (constant) or cosine from lr to 0 at `epochs`."""
    if config.lr_schedule == "constant":
        return None
    total = max(config.epochs * steps, 1)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + np.cos(np.pi * min(step, total) / total))
    )


def train_epoch(
    model: FusionCTR,
    data: ds.TrainingData,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    rng: np.random.Generator,
    device: torch.device,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> float:
    """One pass over the shuffled training events; returns the mean loss."""
    model.train()
    q = sampling_distribution(data, config)
    content = vocab_content(data).to(device) if config.catalogue_softmax else None
    order = rng.permutation(len(data.train_items))
    steps = steps_per_epoch(data, config)
    total = 0.0
    for step in tqdm(range(steps), desc="train", leave=False, mininterval=2.0):
        events = order[step * config.batch_size : (step + 1) * config.batch_size]
        batch = make_batch(data, events, q, config, rng).to(device)
        proj = model.content_proj(batch.content_table)
        side = model.encode_user(
            batch.user_idx, batch.hist_idx, proj[batch.hist_content], batch.hist_mask
        )
        logits = model.score_candidates(
            side, batch.item_idx, proj[batch.item_content], batch.item_count
        )
        loss = training_loss(logits - batch.logq, batch.labels, config)
        if content is not None:  # the positive's own id, before ID dropout
            targets = torch.from_numpy(data.item_to_vocab[data.train_items[events]]).to(device)
            drop = torch.from_numpy(rng.random(len(content)) < config.id_dropout).to(device)
            loss = loss + config.catalogue_softmax * catalogue_loss(
                model, side, model.content_proj(content), targets, drop
            )
        if config.embedding_l2:
            rows = (
                model.user_emb(batch.user_idx).pow(2).sum()
                + model.item_emb(batch.item_idx).pow(2).sum()
            )
            loss = loss + config.embedding_l2 * rows / len(events)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += float(loss.detach())
    return total / max(steps, 1)


def valid_subset(holdout: ds.Holdout, config: TrainConfig) -> ds.Holdout:
    """A seeded subset of `valid_users` cases for early stopping (all when 0 or when the
    holdout has no more: MovieLens-100K's 943 users are all used at the default 2,000)."""
    if not config.valid_users or config.valid_users >= len(holdout.users):
        log.info("validation on all %d users", len(holdout.users))
        return holdout
    rng = np.random.default_rng(config.seed + 1)
    rows = np.sort(rng.choice(len(holdout.users), config.valid_users, replace=False))
    log.info("validation on %d of %d users (seeded sample)", len(rows), len(holdout.users))
    return ds.Holdout(users=holdout.users[rows], items=holdout.items[rows], exclude=holdout.exclude)


def train(config: TrainConfig, data_dir: Path, features_dir: Path, out: Path) -> dict:
    """Seed, data, model, loop with early stopping, save; returns the training summary."""
    seed_everything(config.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    rng = np.random.default_rng(config.seed)
    data = ds.load_training_data(
        data_dir, features_dir, config.mode, config.history_len, config.cold_items, config.seed
    )
    config = dataclasses.replace(config, content_dim=int(data.content.shape[1]))
    device = pick_device(config.device)
    counts = torch.from_numpy(data.vocab_counts())
    model = build_model(config, len(data.user_vocab), len(data.item_vocab), counts).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config, steps_per_epoch(data, config))
    out.mkdir(parents=True, exist_ok=True)
    save_config(out, config)
    from torch.utils.tensorboard import SummaryWriter  # slow import: only when training

    writer = SummaryWriter(str(out / "tensorboard"))
    meta = {"data_dir": str(data_dir), "features_dir": str(features_dir)}
    vocab = {"users": data.user_vocab, "items": data.item_vocab}
    head = data.train_counts[~data.is_tail]
    head_tail = {
        "head_share": schema.HEAD_SHARE,
        "min_head_count": int(head.min() if head.size else 0),
    }
    best, best_epoch, started = -1.0, -1, time.perf_counter()
    holdout = valid_subset(data.valid, config)
    for epoch in range(1, config.epochs + 1):
        loss = train_epoch(model, data, optimizer, config, rng, device, scheduler)
        writer.add_scalar("train/loss", loss, epoch)
        if epoch % config.eval_every and epoch != config.epochs:
            continue
        valid = ranking_metrics(model, data, holdout, config, device)
        ndcg = valid[f"NDCG@{config.k}"]
        for name in (f"NDCG@{config.k}", f"HR@{config.k}", f"TailHR@{config.k}"):
            writer.add_scalar(f"valid/{name}", valid[name], epoch)
        log.info("epoch %d loss %.4f valid NDCG@%d %.4f", epoch, loss, config.k, ndcg)
        if ndcg > best:
            best, best_epoch = ndcg, epoch
            extra = {**meta, "epoch": epoch, "valid_metrics": valid, "head_tail": head_tail}
            save_checkpoint(out, model, config, vocab, extra)
        elif epoch - best_epoch >= config.patience * config.eval_every:
            log.info("early stop at epoch %d (best %d)", epoch, best_epoch)
            break
    writer.close()
    summary = {
        "best_epoch": best_epoch,
        f"valid_NDCG@{config.k}": best,
        "train_seconds": round(time.perf_counter() - started, 2),
        "device": str(device),
        **meta,
    }
    write_json_atomic(out / SUMMARY_FILE, summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="canonical tables dir")
    parser.add_argument("--features", type=Path, required=True, help="item_features dir")
    parser.add_argument("--out", type=Path, required=True, help="run dir to write")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = config_from_args(args)
    summary = train(config, args.data, args.features, args.out)
    print(f"trained {args.out}: best epoch {summary['best_epoch']}, {summary}")


if __name__ == "__main__":
    main()
