"""Benchmark: seconds per training step against the catalogue's size (issue 11).

    python -m benchmarks.train_step --n-items 10000 100000 1000000 --steps 12

Per catalogue size, an in-memory synthetic data set (``benchmarks.eval_cost``: random
unit content vectors, Zipf popularity, users = items / 2 with 20 events each) and the
default model. Each variant trains ``--steps`` steps through the real loop
(``training.train``: ``EpochBatches`` -> ``TrainStep`` -> optimisers), the first
``--warmup`` not timed; printed: median seconds per step (batch building included) and
the process's peak RSS after the variant. Variants:

- ``full + dense``: the full catalogue softmax and dense Adam (what every catalogue got
  before; above 100k items its [batch, items] logits are skipped: 2 GB at 1M);
- ``sampled + dense``: the sampled catalogue softmax, dense Adam;
- ``sampled + sparse``: the sampled softmax and SparseAdam on the ID tables: the
  defaults above 20,000 items / 100,000 ID rows.

Variants run one after another in one process; nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import resource
import statistics
import time

import numpy as np
import torch

from benchmarks.eval_cost import random_training_data
from training.config import TrainConfig
from training.model import build_model
from training.train import EpochBatches, TrainStep, make_optimizers, take_step, vocab_content

log = logging.getLogger("benchmarks.train_step")
VARIANTS = {  # name -> (sampled catalogue softmax, sparse embeddings)
    "full + dense": (False, False),
    "sampled + dense": (True, False),
    "sampled + sparse": (True, True),
}
FULL_MAX_ITEMS = 100_000  # the full softmax is not run above this (memory)


def step_seconds(data, config: TrainConfig, sparse: bool, steps: int, warmup: int) -> list:
    """Seconds of each timed step of ``steps`` training steps."""
    torch.manual_seed(config.seed)
    counts = torch.from_numpy(data.vocab_counts())
    model = build_model(config, len(data.user_vocab), len(data.item_vocab), counts, sparse)
    full = len(data.item_vocab) <= config.full_softmax_max_items
    step = TrainStep(model, config, vocab_content(data) if full else None)
    optimizers = make_optimizers(model, config)
    rng = np.random.default_rng(config.seed)
    batches = iter(EpochBatches(data, dataclasses.replace(config, max_steps_per_epoch=steps),
                                (rng, rng)))  # fmt: skip
    times = []
    for i in range(steps):
        started = time.perf_counter()
        take_step(step, next(batches), optimizers)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--steps", type=int, default=12, help="steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.warmup >= args.steps:
        parser.error("--warmup must be below --steps")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    rows = []
    for n_items in args.n_items:
        data = random_training_data(n_items, max(n_items // 2, 1), 20, seed=0, min_history=2)
        base = TrainConfig(content_dim=int(data.content.shape[1]))
        for name, (sampled, sparse) in VARIANTS.items():
            if not sampled and n_items > FULL_MAX_ITEMS:
                rows.append((n_items, name, None, None))
                continue
            limit = 0 if sampled else n_items  # 0: sampled at any size
            config = dataclasses.replace(base, full_softmax_max_items=limit)
            times = step_seconds(data, config, sparse, args.steps, args.warmup)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            rows.append((n_items, name, statistics.median(times), peak))
            log.info("%d items, %s: %.3f s/step", n_items, name, rows[-1][2])
    print("\n| items | variant | s / step (median) | events / s | peak RSS GB (process) |")
    print("| ---: | --- | ---: | ---: | ---: |")
    for n_items, name, median, peak in rows:
        if median is None:
            print(f"| {n_items:,} | {name} | not run ([512, items] logits) | | |")
        else:
            print(f"| {n_items:,} | {name} | {median:.3f} | {512 / median:,.0f} | {peak:.1f} |")


if __name__ == "__main__":
    main()
