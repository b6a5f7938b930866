"""Train the fusion CTR model: negative sampling, early stopping on validation NDCG@10.

Run::

    python -m training.train --data data/movielens-100k \\
        --features feature_repo/data/movielens-100k \\
        --mode deploy --out artifacts/movielens-100k [--epochs 20 --sampler uniform ...]
    torchrun --standalone --nproc_per_node 2 -m training.train ... --export

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

On top of that loss, `catalogue_softmax` (weight, default 1) adds a catalogue softmax: the
cross-entropy of each positive against the catalogue, on the model's dot-product part
(u + s).v (`FusionCTR.dot_logits`; s is the sequence encoder's state). Full ranking asks
the model to put the next item above all others, popular ones above all, which a handful
of random negatives never shows it. Up to `full_softmax_max_items` vocabulary items
(20,000) it is the full softmax, one [B, d] x [d, I] product per step; above, a sampled
softmax over the batch's own positives plus `catalogue_negatives` uniform items, with
the log-Q correction and accidental hits masked (`sampled_catalogue_loss`), so a step
costs the same at 1M items as at 10k. The same `id_dropout` share of those items is
shown as new items (unknown row, count 0) each step, so content-only items learn to
compete with the catalogue too. The BCE term stays: it keeps `prob` a click probability.
Above 100k ID rows the embeddings get sparse gradients and SparseAdam
(`sparse_embeddings`), so an optimiser step touches only the rows of the batch.

Epochs stream: `EpochBatches` (a torch.utils.data IterableDataset) cuts each batch's
[batch, history_len] histories from the [events] arrays as it is consumed. Under
torchrun (`training.distributed`) each rank takes its shard of the same permutation and
its share of the global `batch_size`; DDP averages the gradients; rank 0 validates,
checkpoints and, with `--export`, exports. docs/TRAINING.md has the launch commands.

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
import os
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, IterableDataset
from tqdm import tqdm

from core import schema
from core.files import write_json_atomic
from training import dataset as ds
from training import distributed
from training.checkpoint import save_checkpoint, save_config
from training.config import (
    TrainConfig,
    add_config_arguments,
    config_from_args,
    load_config_file,
)
from training.distributed import Cluster
from training.model import MASK_VALUE, FusionCTR, UserSide, build_model
from training.scoring import pick_device, ranking_metrics

log = logging.getLogger(__name__)
SUMMARY_FILE = "train_summary.json"
SOLO = Cluster()  # a process training alone
SPARSE_ABOVE_ROWS = 100_000  # sparse_embeddings auto: ID rows (users + items) above this


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


class NegativeSampler:
    """Draws from q by inverse CDF, the CDF built once per epoch rather than once per
    batch (``Generator.choice(p=q)`` rebuilds it each call: O(catalogue) per step). The
    draws are those ``rng.choice(len(q), size, p=q)`` makes from the same generator."""

    def __init__(self, q: np.ndarray) -> None:
        self.q = q
        self.cdf = np.cumsum(q)
        self.cdf /= self.cdf[-1]
        self.n_positive = int(np.count_nonzero(q))

    def __call__(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return self.cdf.searchsorted(rng.random(shape), side="right")


def sampled_catalogue(data: ds.TrainingData, config: TrainConfig) -> bool:
    """Whether the catalogue softmax is sampled (vocabulary above full_softmax_max_items)."""
    return len(data.item_vocab) > config.full_softmax_max_items


def make_batch(
    data: ds.TrainingData,
    events: np.ndarray,
    sampler: NegativeSampler,
    config: TrainConfig,
    rng: np.random.Generator,
) -> ds.Batch:
    """Positives for `events` plus sampled negatives, with ID dropout applied, and the
    inputs of the catalogue softmax (``catalogue_inputs``)."""
    users = data.train_users[events]
    skip = 0  # history_skip: some histories end one item early (no draw when off)
    if config.history_skip:
        skip = (rng.random(len(events)) < config.history_skip).astype(np.int64)
    hist = ds.causal_histories(data, events, config.history_len, skip)
    negs = sampler(rng, (len(events), config.negatives))
    cands = np.concatenate([data.train_items[events][:, None], negs], axis=1)
    labels = np.zeros(cands.shape, dtype=np.float32)
    labels[:, 0] = 1.0
    logq = np.log(sampler.q[cands] * sampler.n_positive + 1e-12) * config.logq_weight
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
    batch = id_dropout(batch, config, rng)
    if config.catalogue_softmax:
        catalogue_inputs(batch, data, events, config, rng)
    return batch


def catalogue_inputs(
    batch: ds.Batch,
    data: ds.TrainingData,
    events: np.ndarray,
    config: TrainConfig,
    rng: np.random.Generator,
) -> None:
    """Fill the catalogue softmax's inputs of `batch` (see ``catalogue_loss``).

    Full (vocabulary up to ``full_softmax_max_items``): the positives' own ids (before ID
    dropout) and the vocabulary rows shown as new items this step. Sampled: K candidate
    items = the batch's B positives (in-batch negatives for the other rows) followed by
    ``catalogue_negatives`` items drawn uniformly from the vocabulary, their content
    rows, ID dropout over them, and log Q(j) = log(E[times j is among the K]) = log(B *
    p_train(j) + N / n_items) for the log-Q correction (Yi et al. 2019; mixed negative
    sampling, Yang et al. 2020). Cost per step: [B, B + N], whatever the catalogue's size.
    """
    targets = data.item_to_vocab[data.train_items[events]]
    batch.targets = torch.from_numpy(targets)
    n_items = len(data.item_vocab)
    if not sampled_catalogue(data, config):
        batch.cat_drop = torch.from_numpy(rng.random(n_items + 1) < config.id_dropout)
        return
    uniform = rng.integers(1, n_items + 1, size=config.catalogue_negatives)
    items = np.concatenate([targets, uniform])
    expected = len(targets) * data.vocab_share[items] + config.catalogue_negatives / n_items
    batch.cat_items = torch.from_numpy(items)
    batch.cat_content = torch.from_numpy(data.content[data.vocab_rows[items]])
    batch.cat_logq = torch.from_numpy(np.log(expected).astype(np.float32))
    batch.cat_drop = torch.from_numpy(rng.random(len(items)) < config.id_dropout)


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
    return torch.from_numpy(data.content[data.vocab_rows])


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


def sampled_catalogue_loss(model: FusionCTR, side: UserSide, batch: ds.Batch) -> torch.Tensor:
    """Sampled softmax over the batch's K catalogue candidates (``catalogue_inputs``).

    Row b's positive is column b (the in-batch part). Every logit is corrected by
    - log Q(j), so the sampled softmax estimates the full one without the bias of which
    items get sampled; a column holding row b's own positive item elsewhere (the same item
    is another row's positive, or was drawn uniformly) is an accidental hit and is masked.
    """
    proj = model.content_proj(batch.cat_content)
    logits = model.dot_logits(side, batch.cat_items, proj, batch.cat_drop) - batch.cat_logq
    rows = torch.arange(len(batch.targets), device=logits.device)
    hits = batch.cat_items.unsqueeze(0) == batch.targets.unsqueeze(1)  # [B, K]
    hits[rows, rows] = False
    return F.cross_entropy(logits.masked_fill(hits, MASK_VALUE), rows)


class TrainStep(nn.Module):
    """One step's loss as a module: what DistributedDataParallel wraps (its gradient
    all-reduce hooks need the forward pass to go through the wrapped module).

    ``vocab_content`` [n_items + 1, C] is needed by the full catalogue softmax only.
    """

    def __init__(
        self, model: FusionCTR, config: TrainConfig, vocab_content: torch.Tensor | None
    ) -> None:
        super().__init__()
        self.model, self.config, self.vocab_content = model, config, vocab_content

    def forward(self, batch: ds.Batch) -> torch.Tensor:
        model, config = self.model, self.config
        proj = model.content_proj(batch.content_table)
        side = model.encode_user(
            batch.user_idx, batch.hist_idx, proj[batch.hist_content], batch.hist_mask
        )
        logits = model.score_candidates(
            side, batch.item_idx, proj[batch.item_content], batch.item_count
        )
        loss = training_loss(logits - batch.logq, batch.labels, config)
        if config.catalogue_softmax and batch.cat_items is not None:
            loss = loss + config.catalogue_softmax * sampled_catalogue_loss(model, side, batch)
        elif config.catalogue_softmax:
            vocab_proj = model.content_proj(self.vocab_content)
            loss = loss + config.catalogue_softmax * catalogue_loss(
                model, side, vocab_proj, batch.targets, batch.cat_drop
            )
        if config.embedding_l2:
            rows = (
                model.user_emb(batch.user_idx).pow(2).sum()
                + model.item_emb(batch.item_idx).pow(2).sum()
            )
            loss = loss + config.embedding_l2 * rows / len(batch.user_idx)
        return loss


def local_batch_size(config: TrainConfig, cluster: Cluster) -> int:
    """This rank's share of the global ``batch_size``."""
    return -(-config.batch_size // cluster.world)


def steps_per_epoch(data: ds.TrainingData, config: TrainConfig, cluster: Cluster = SOLO) -> int:
    """Steps of one epoch: the same on every rank (each step is a collective)."""
    shard = -(-len(data.train_items) // cluster.world)
    steps = -(-shard // local_batch_size(config, cluster))
    return min(steps, config.max_steps_per_epoch) if config.max_steps_per_epoch else steps


class EpochBatches(IterableDataset):
    """One epoch's training batches for one rank, built as they are consumed.

    The events are a permutation drawn from ``order_rng`` (the same on every rank),
    padded by wrapping to a multiple of the world size (as DistributedSampler does) and
    dealt out: rank r takes positions r, r + world, ... Each batch holds only its own
    [batch, history_len] histories (``dataset.causal_histories``), cut from the
    [events] arrays, so memory does not grow with the number of events beyond those.
    """

    def __init__(
        self,
        data: ds.TrainingData,
        config: TrainConfig,
        rngs: tuple[np.random.Generator, np.random.Generator],
        cluster: Cluster = SOLO,
    ) -> None:
        super().__init__()
        self.data, self.config, self.cluster = data, config, cluster
        self.order_rng, self.rng = rngs
        self.sampler = NegativeSampler(sampling_distribution(data, config))

    def shard(self) -> np.ndarray:
        order = self.order_rng.permutation(len(self.data.train_items))
        world = self.cluster.world
        padded = np.resize(order, -(-len(order) // world) * world)  # wraps around
        return padded[self.cluster.rank :: world]

    def __len__(self) -> int:
        return steps_per_epoch(self.data, self.config, self.cluster)

    def __iter__(self) -> Iterator[ds.Batch]:
        shard, size = self.shard(), local_batch_size(self.config, self.cluster)
        for step in range(len(self)):
            events = shard[step * size : (step + 1) * size]
            yield make_batch(self.data, events, self.sampler, self.config, self.rng)


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


def use_sparse_embeddings(config: TrainConfig, n_rows: int, cluster: Cluster) -> bool:
    """``sparse_embeddings``: on / off, or auto = on above SPARSE_ABOVE_ROWS ID rows.

    Dense Adam updates every embedding row every step (a training step at 1M items and
    500k users: 0.65 s, against 0.11 s with SparseAdam on the rows a batch touched;
    ``benchmarks.train_step``), so above that size the cost per step would grow with the
    catalogue. SparseAdam has no
    weight decay and NCCL no sparse all-reduce: auto stays dense for either.
    """
    if config.sparse_embeddings == "off":
        return False
    if config.sparse_embeddings == "on":
        if config.weight_decay:
            raise ValueError(
                "sparse_embeddings on: SparseAdam has no weight decay; set --weight-decay 0 "
                "(--embedding-l2 regularises the rows a batch touches) or --sparse-embeddings off"
            )
        if cluster.backend == "nccl":
            raise ValueError(
                "sparse_embeddings on: NCCL cannot all-reduce sparse gradients; use "
                "--sparse-embeddings off (or auto) on GPUs"
            )
        return True
    return n_rows > SPARSE_ABOVE_ROWS and not config.weight_decay and cluster.backend != "nccl"


def make_optimizers(model: FusionCTR, config: TrainConfig) -> list[torch.optim.Optimizer]:
    """Adam, or with sparse embeddings SparseAdam on the ID tables and Adam on the rest."""
    if not model.item_emb.sparse:
        adam = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        return [adam]
    tables = [model.user_emb.weight, model.item_emb.weight]
    rest = [p for p in model.parameters() if all(p is not t for t in tables)]
    return [
        torch.optim.SparseAdam(tables, lr=config.lr),
        torch.optim.Adam(rest, lr=config.lr, weight_decay=config.weight_decay),
    ]


def take_step(
    step: nn.Module,
    batch: ds.Batch,
    optimizers: list[torch.optim.Optimizer],
    schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler] = (),
) -> float:
    """One optimisation step on ``batch`` (already on the device); its loss."""
    loss = step(batch)
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()
    for scheduler in schedulers:
        scheduler.step()
    return float(loss.detach())


def train_epoch(
    step: nn.Module,
    batches: EpochBatches,
    optimizers: list[torch.optim.Optimizer],
    device: torch.device,
    schedulers: list[torch.optim.lr_scheduler.LRScheduler] = (),
    show_progress: bool = True,
) -> float:
    """One pass over this rank's shard of the shuffled training events; the mean loss.
    `step` is a ``TrainStep`` or the DistributedDataParallel around one."""
    step.train()
    # batches are built in this process, in order (numpy, vectorised); the loader's own
    # generator keeps its seed draw off torch's global one (dropout masks stay as seeded)
    loader = DataLoader(batches, batch_size=None, num_workers=0, generator=torch.Generator())
    total, steps = 0.0, 0
    for batch in tqdm(
        loader, desc="train", leave=False, mininterval=2.0, disable=not show_progress
    ):
        total += take_step(step, batch.to(device), optimizers, schedulers)
        steps += 1
    return total / max(steps, 1)


def valid_subset(holdout: ds.Holdout, config: TrainConfig) -> ds.Holdout:
    """A seeded subset of `valid_users` cases for early stopping (all when 0 or when the
    holdout has no more: MovieLens-100K's 943 users are all used at the default 2,000)."""
    sample = ds.sample_holdout(holdout, config.valid_users, config.seed + 1)
    log.info("validation on %d of %d users", len(sample.users), len(holdout.users))
    return sample


def train(config: TrainConfig, data_dir: Path, features_dir: Path, out: Path) -> dict:
    """Seed, data, model, loop with early stopping, save; returns the training summary.

    Under torchrun every rank runs this (``training.distributed``); rank 0 alone
    validates, writes the run dir and returns the summary the others return too.
    """
    seed_everything(config.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    cluster, device = distributed.init(pick_device(config.device))
    try:
        return _train(config, data_dir, features_dir, out, cluster, device)
    finally:
        distributed.shutdown(cluster)


def _train(
    config: TrainConfig,
    data_dir: Path,
    features_dir: Path,
    out: Path,
    cluster: Cluster,
    device: torch.device,
) -> dict:
    # one generator for the event order (the same on every rank), one for the draws (each
    # rank its own); alone, a single generator does both, as it always has
    rng = np.random.default_rng(config.seed if cluster.world == 1 else [config.seed, cluster.rank])
    order_rng = rng if cluster.world == 1 else np.random.default_rng(config.seed)
    data = ds.load_training_data(
        data_dir, features_dir, config.mode, config.history_len, config.cold_items, config.seed
    )
    config = dataclasses.replace(config, content_dim=int(data.content.shape[1]))
    check_fits(config, data, cluster)
    counts = torch.from_numpy(data.vocab_counts())
    sparse = use_sparse_embeddings(config, len(data.user_vocab) + len(data.item_vocab), cluster)
    model = build_model(config, len(data.user_vocab), len(data.item_vocab), counts, sparse)
    model = model.to(device)
    full = config.catalogue_softmax and not sampled_catalogue(data, config)
    step = TrainStep(model, config, vocab_content(data).to(device) if full else None)
    if cluster.distributed:
        ids = [device.index] if device.type == "cuda" else None
        step = DistributedDataParallel(step, device_ids=ids)
    optimizers = make_optimizers(model, config)
    steps = steps_per_epoch(data, config, cluster)
    schedulers = [
        s for s in (make_scheduler(o, config, steps) for o in optimizers) if s is not None
    ]
    batches = EpochBatches(data, config, (order_rng, rng), cluster)
    log.info(
        "rank %d/%d: %d steps of %d events per epoch, catalogue softmax %s, %s embeddings",
        cluster.rank, cluster.world, steps, local_batch_size(config, cluster),
        ("off" if not config.catalogue_softmax else "full" if full else
         f"sampled ({config.catalogue_negatives} uniform + in-batch)"),
        "sparse" if sparse else "dense",
    )  # fmt: skip
    if cluster.main:
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
    best, best_epoch, started, trained_steps = -1.0, -1, time.perf_counter(), 0
    stepping = 0.0  # seconds in training steps (validation excluded)
    holdout = valid_subset(data.valid, config)
    for epoch in range(1, config.epochs + 1):
        epoch_started = time.perf_counter()
        loss = train_epoch(step, batches, optimizers, device, schedulers, cluster.main)
        stepping += time.perf_counter() - epoch_started
        trained_steps += steps
        if cluster.main:
            writer.add_scalar("train/loss", loss, epoch)
        if epoch % config.eval_every and epoch != config.epochs:
            continue
        stop = False
        if cluster.main:
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
                stop = True
        if distributed.broadcast_flag(cluster, stop, device):
            break
    seconds = time.perf_counter() - started
    events = trained_steps * local_batch_size(config, cluster) * cluster.world
    summary = {
        "best_epoch": best_epoch,
        f"valid_NDCG@{config.k}": best,
        "train_seconds": round(seconds, 2),
        "steps": trained_steps,
        "events_per_second": round(events / max(stepping, 1e-9), 1),  # training steps only
        "step_seconds": round(stepping, 2),
        "world_size": cluster.world,
        "device": str(device),
        **meta,
    }
    if cluster.main:
        writer.close()
        write_json_atomic(out / SUMMARY_FILE, summary)
    distributed.barrier(cluster)  # the other ranks end once the run dir is complete
    return summary


def check_fits(
    config: TrainConfig,
    data: ds.TrainingData,
    cluster: Cluster = SOLO,
    available: int | None = None,
) -> None:
    """Fail before the first step, naming the setting to change, when the run's largest
    allocations cannot fit in the memory available (MemAvailable of /proc/meminfo), per
    process: ID tables with their gradients and Adam moments, the full catalogue
    softmax's [batch, items] logits, and validation's [eval_batch_users, catalogue]
    score arrays. An estimate of what grows with the data, not of the whole process."""
    available = available if available is not None else memory_available()
    if available is None:  # not Linux: nothing to compare with
        return
    d, n_items = config.embedding_dim, len(data.item_vocab)
    rows = len(data.user_vocab) + n_items + 2
    parts = {
        "ID embeddings (x4: weights, gradients, Adam moments)": 16 * rows * d,
        "content vectors": data.content.nbytes,
        "validation scores": 24 * config.eval_batch_users * data.n_catalogue,
    }
    if config.catalogue_softmax and not sampled_catalogue(data, config):
        batch = local_batch_size(config, cluster)
        parts["full catalogue softmax"] = 16 * batch * n_items + 24 * n_items * d
    per_process = sum(parts.values())
    # every process on this machine holds its own copy: the launcher says how many
    local = int(os.environ.get("LOCAL_WORLD_SIZE", cluster.world))
    need = per_process * local
    if need <= 0.8 * available:
        return
    largest = max(parts, key=parts.get)
    fixes = {
        "ID embeddings (x4: weights, gradients, Adam moments)": "--embedding-dim",
        "content vectors": "a smaller catalogue or encoder",
        "validation scores": "--eval-batch-users",
        "full catalogue softmax": f"--full-softmax-max-items below {n_items} (sampled "
        "softmax) or --batch-size",
    }
    detail = ", ".join(f"{k} {v / 2**30:.1f} GiB" for k, v in parts.items())
    raise MemoryError(
        f"this run needs about {need / 2**30:.1f} GiB ({detail}) of {available / 2**30:.1f} "
        f"GiB available: lower {fixes[largest]} (the largest part is the {largest})"
    )


def memory_available() -> int | None:
    """Bytes the kernel says can be allocated without swapping, or None off Linux."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m training.train``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="canonical tables dir")
    parser.add_argument("--features", type=Path, required=True, help="item_features dir")
    parser.add_argument("--out", type=Path, required=True, help="run dir to write")
    parser.add_argument(
        "--export", action="store_true", help="then export to ONNX (training.export; rank 0)"
    )
    parser.add_argument(
        "--config", type=Path, help="a JSON file of TrainConfig fields (e.g. training.tune's "
        "best_config.json) as the base; the flags below override it",
    )  # fmt: skip
    add_config_arguments(parser)
    return parser


def parse_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TrainConfig:
    """``--config`` (when given) with the flags on top; a bad value is a usage error."""
    try:
        base = load_config_file(args.config) if args.config else None
        return config_from_args(args, base)
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = parse_config(parser, args)
    try:
        summary = train(config, args.data, args.features, args.out)
    except (MemoryError, ValueError, FileNotFoundError, distributed.LaunchError) as exc:
        raise SystemExit(f"training failed: {exc}") from None
    if distributed.launched_by_torchrun() and int(os.environ.get("RANK", "0")) != 0:
        return
    if args.export:
        from training.export import export_run

        export_run(args.out, features_dir=args.features)
    print(f"trained {args.out}: best epoch {summary['best_epoch']}, {summary}")


if __name__ == "__main__":
    main()
