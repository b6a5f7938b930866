"""Benchmark: what full-catalogue evaluation costs at 100k and 1M items (issue 11).

    python -m benchmarks.eval_cost --n-items 100000 1000000 [--chunks 2] [--pairs 2048]

Per catalogue size it builds a synthetic ``TrainingData`` in memory
(``random_training_data``: random unit 384-d content vectors, Zipf popularity, 20,000
users with 50-item histories, i.e. 1M train events) and a randomly initialised FusionCTR
of the default config: the cost does not depend on the weights, so nothing is trained
and no text is encoded. It then scores and ranks ``--chunks`` chunks of
``eval_batch_users`` users of the validation sample over the whole catalogue, exactly as
validation does (``training.scoring.score_users`` with ``eval_pairs`` pairs per forward
pass, then ``RankingAccumulator.add``), and reports:

- seconds per user for scoring and for ranking (measured on those chunks);
- the peak RSS above the set-up's (content table, model, data) while they ran, and the
  set-up's own RSS;
- the size of the one [users, I, L, attention_dim] tensor that the unchunked scoring of
  a chunk built (computed, not run: it would not fit);
- extrapolations from the CPU seconds per user (``time.process_time``: on a shared
  machine the wall time also counts other jobs' turns; with one torch thread the two
  agree on an idle core), marked as such: one validation pass over ``valid_users``
  users, and one full-ranking pass over ``--test-users`` users (``training.evaluate``
  makes two fusion passes, ranks each five times: the model and four re-ranking
  weights, and adds the baselines).

Prints one table; nothing is asserted. ``torch`` runs on ``--num-threads`` threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from tqdm import tqdm

from core import schema
from training import dataset as ds
from training.config import TrainConfig
from training.metrics import RankingAccumulator
from training.model import build_model
from training.scoring import catalogue_side, pick_device, score_users
from training.train import valid_subset

log = logging.getLogger("benchmarks.eval_cost")
CONTENT_DIM = 384  # all-MiniLM-L6-v2, the default encoder
ZIPF_EXPONENT = 1.1  # popularity of the item at rank r ~ r^-1.1 (training.synthetic's)
STATUS = Path("/proc/self/status")


def random_training_data(
    n_items: int,
    n_users: int,
    history_len: int,
    content_dim: int = CONTENT_DIM,
    seed: int = 0,
    min_history: int | None = None,
) -> ds.TrainingData:
    """An eval-mode ``TrainingData`` without tables: each user's train events are their
    history (``min_history``..``history_len`` items drawn by Zipf popularity, default all
    ``history_len``), counts and the vocabulary follow from them (items never drawn are
    new: vocabulary row 0), and the validation and test targets are random items."""
    rng = np.random.default_rng(seed)
    item_ids = np.arange(n_items).astype(str)
    content = np.zeros((n_items + 1, content_dim), dtype=np.float32)
    for start in range(0, n_items, 100_000):  # float32 draws: no float64 [I, C] copy
        block = rng.standard_normal((min(100_000, n_items - start), content_dim), np.float32)
        content[start : start + len(block)] = block / np.linalg.norm(block, axis=1)[:, None]
    pop = np.arange(1, n_items + 1, dtype=np.float64) ** -ZIPF_EXPONENT
    pop = pop[rng.permutation(n_items)] / pop.sum()
    lengths = rng.integers(history_len if min_history is None else min_history, history_len + 1,
                           n_users)  # fmt: skip
    train_users = np.repeat(np.arange(n_users), lengths)
    train_items = rng.choice(n_items, size=len(train_users), p=pop)
    histories = np.full((n_users, history_len), n_items, dtype=np.int64)
    slot = np.arange(len(train_users)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    histories[train_users, history_len - np.repeat(lengths, lengths) + slot] = train_items
    counts = np.bincount(train_items, minlength=n_items).astype(np.int64)
    item_to_vocab = np.cumsum(counts > 0) * (counts > 0)
    seen = sp.csr_matrix(
        (np.ones(len(train_users), dtype=bool), (train_users, train_items)),
        shape=(n_users, n_items),
    )
    users = np.arange(n_users)
    valid_items, test_items = rng.integers(0, n_items, (2, n_users))
    valid_seen = sp.csr_matrix((np.ones(n_users, bool), (users, valid_items)), seen.shape)
    return ds.TrainingData(
        user_ids=users.astype(str),
        item_ids=item_ids,
        user_vocab=users.astype(str).tolist(),
        item_vocab=item_ids[counts > 0].tolist(),
        user_to_vocab=users + 1,
        item_to_vocab=np.r_[item_to_vocab, 0].astype(np.int64),
        content=content,
        train_counts=counts,
        is_tail=schema.head_tail_flags(pd.Series(counts, index=item_ids)).to_numpy() == 1,
        train_users=train_users,
        train_items=train_items,
        user_start=np.repeat(np.cumsum(lengths) - lengths, lengths),
        histories=histories,
        valid=ds.Holdout(users=users, items=valid_items, exclude=seen),
        test=ds.Holdout(users=users, items=test_items, exclude=(seen + valid_seen).tocsr()),
        hidden_items=np.zeros(n_items, dtype=bool),
    )


def _status_kb(field: str) -> int | None:
    """A ``VmRSS``-style field of /proc/self/status in kB (None off Linux)."""
    if not STATUS.exists():
        return None
    for line in STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def rss_gb() -> float:
    """The process's resident set now, in GB (the peak so far where /proc is missing)."""
    kb = _status_kb("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1e6


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_gb() -> float:
    """Peak resident set since ``reset_peak`` (since start where it could not reset), GB."""
    kb = _status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1e6


def measure(n_items: int, pairs: int, args: argparse.Namespace) -> dict:
    """Score and rank ``args.chunks`` user chunks of the validation sample over ``n_items``."""
    config = dataclasses.replace(TrainConfig(), content_dim=CONTENT_DIM, eval_pairs=pairs)
    started = time.perf_counter()
    data = random_training_data(n_items, args.n_users, config.history_len, seed=args.seed)
    counts = torch.from_numpy(data.vocab_counts())
    model = build_model(config, len(data.user_vocab), len(data.item_vocab), counts).eval()
    setup_s = time.perf_counter() - started
    device = pick_device(args.device)
    model = model.to(device)
    holdout = valid_subset(data.valid, config)
    base = rss_gb()
    exact_peak = reset_peak()
    started = time.perf_counter()
    catalogue = catalogue_side(model, data, device)
    catalogue_s = time.perf_counter() - started
    acc = RankingAccumulator(data.train_counts, data.is_tail, k=config.k)
    score_s, score_cpu, rank_s, rank_cpu = 0.0, 0.0, 0.0, 0.0
    chunk = config.eval_batch_users
    for c in tqdm(range(args.chunks), desc=f"{n_items} items", leave=False):
        rows = np.arange(c * chunk, (c + 1) * chunk)
        users = holdout.users[rows]
        started, cpu = time.perf_counter(), time.process_time()
        scores = score_users(model, data, users, device, None, catalogue, config.eval_pairs)
        score_s += time.perf_counter() - started
        score_cpu += time.process_time() - cpu
        started, cpu = time.perf_counter(), time.process_time()
        acc.add(scores, holdout.items[rows], holdout.exclude[users])
        rank_s += time.perf_counter() - started
        rank_cpu += time.process_time() - cpu
    n = args.chunks * chunk
    per_user = (score_cpu + rank_cpu) / n  # CPU time: what an idle core would take
    unchunked = chunk * n_items * config.history_len * config.attention_dim * 4
    return {
        "items": n_items,
        "eval_pairs": pairs,
        "users measured": n,
        "setup s": round(setup_s, 1),
        "catalogue projection s": round(catalogue_s, 2),
        "score s/user (wall)": round(score_s / n, 3),
        "score CPU s/user": round(score_cpu / n, 3),
        "rank s/user (wall)": round(rank_s / n, 4),
        "rank CPU s/user": round(rank_cpu / n, 4),
        "setup RSS GB": round(base, 2),
        "peak RSS above setup GB": round(peak_gb() - base, 2) if exact_peak else float("nan"),
        "unchunked DIN tensor GB (computed)": round(unchunked / 1e9, 1),
        f"validation pass, {len(holdout.users)} users, min (extrapolated)": round(
            (catalogue_s + per_user * len(holdout.users)) / 60, 1
        ),
        f"test pass, {args.test_users} users, h (extrapolated)": round(
            (catalogue_s + per_user * args.test_users) / 3600, 2
        ),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.eval_cost", description=__doc__.split("\n")[0]
    )
    p.add_argument("--n-items", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--n-users", type=int, default=20_000, help="users (50 events each)")
    p.add_argument("--chunks", type=int, default=2, help="user chunks measured per size")
    p.add_argument(
        "--pairs", type=int, nargs="+", default=[TrainConfig.eval_pairs], help="eval_pairs"
    )
    p.add_argument("--test-users", type=int, default=100_000, help="full pass to extrapolate")
    p.add_argument("--num-threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.n_users < TrainConfig.eval_batch_users * args.chunks:
        p.error("--n-users must hold --chunks chunks of eval_batch_users users")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.num_threads)
    rows = [measure(n, pairs, args) for n in args.n_items for pairs in args.pairs]
    table = pd.DataFrame(
        {(row.pop("items"), row.pop("eval_pairs")): row for row in rows}, dtype=object
    )
    print(table.rename_axis(columns=["items", "eval_pairs"]).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
