"""Benchmark: full-ranking metrics with a shortlist (``eval_shortlist``) against exact ones.

    python -m benchmarks.shortlist --run artifacts/ml-100k-quality --shortlist 100 200 500
    python -m benchmarks.shortlist --run /tmp/scale/r100k --users 300 --shortlist 500 2000

Loads a trained run (``training.checkpoint.load_run``) and its data, ranks the same
seeded sample of holdout users (the test split in eval mode, else the validation one)
exactly (every catalogue item through the full model) and with each shortlist size N
(the full model on each user's top N by (u + s).v, ``training.scoring``), and prints
HR@10, NDCG@10, TailHR@10, the share of users whose top 10 is identical to the exact
one, and the seconds each took. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from training.checkpoint import load_run, run_data
from training.config import TrainConfig
from training.metrics import RankingAccumulator
from training.scoring import catalogue_side, pick_device, score_users

log = logging.getLogger("benchmarks.shortlist")


def top_k(scores: np.ndarray, exclude, k: int) -> np.ndarray:
    """[u, k] item columns of each row's k best scores, the excluded items left out."""
    masked = scores.copy()
    coo = exclude.tocoo()
    masked[coo.row, coo.col] = -np.inf
    return np.sort(np.argpartition(-masked, k, axis=1)[:, :k], axis=1)


def measure(run: Path, sizes: list[int], n_users: int, seed: int) -> list[dict]:
    model, payload, _ = load_run(run)
    config = TrainConfig.from_dict(payload["config"])
    data = run_data(payload)
    holdout = data.test if data.test is not None else data.valid
    rng = np.random.default_rng(seed)
    rows = np.arange(len(holdout.users))
    if n_users and n_users < len(rows):
        rows = np.sort(rng.choice(rows, n_users, replace=False))
    device = pick_device("cpu")
    catalogue = catalogue_side(model, data, device)
    results, exact_tops = [], []
    for size in [0, *sizes]:
        acc = RankingAccumulator(data.train_counts, data.is_tail, k=config.k)
        same, started = 0, time.perf_counter()
        for part, start in enumerate(range(0, len(rows), config.eval_batch_users)):
            chunk = rows[start : start + config.eval_batch_users]
            users = holdout.users[chunk]
            scores = score_users(model, data, users, device, None, catalogue,
                                 config.eval_pairs, size)  # fmt: skip
            exclude = holdout.exclude[users]
            acc.add(scores, holdout.items[chunk], exclude)
            tops = top_k(scores, exclude, config.k)
            if size == 0:
                exact_tops.append(tops)
            else:
                same += int((tops == exact_tops[part]).all(axis=1).sum())
        seconds = time.perf_counter() - started
        metrics = acc.result()
        results.append({
            "shortlist": size or "exact",
            "HR@10": metrics[f"HR@{config.k}"],
            "NDCG@10": metrics[f"NDCG@{config.k}"],
            "TailHR@10": metrics[f"TailHR@{config.k}"],
            "same_top10": same / len(rows) if size else 1.0,
            "seconds": seconds,
            "users": len(rows),
            "items": data.n_catalogue,
        })  # fmt: skip
        log.info("%s", results[-1])
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="trained run dir")
    parser.add_argument("--shortlist", type=int, nargs="+", default=[200, 500, 2000],
                        help="shortlist sizes N to compare with exact ranking")  # fmt: skip
    parser.add_argument("--users", type=int, default=0, help="seeded user sample (0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="sample seed")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    results = measure(args.run, args.shortlist, args.users, args.seed)
    print(f"\n{args.run}: {results[0]['items']} items, {results[0]['users']} users\n")
    print("| shortlist | HR@10 | NDCG@10 | TailHR@10 | same top 10 | seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['shortlist']} | {r['HR@10']:.4f} | {r['NDCG@10']:.4f} | "
              f"{r['TailHR@10']:.4f} | {r['same_top10']:.3f} | {r['seconds']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
