"""Benchmark: fusion model quality vs the baselines on MovieLens-100K, plus train/export time.

    python -m benchmarks.model_quality [--data data/movielens-100k] [--cold-run 0.1]
        [--out artifacts/ml-100k-quality] [--export-repeats 3] [config overrides...]

Follows DESIGN.md's protocol in eval mode: canonical tables (`training.data`, built if
missing), eval-mode features (`training.features --mode eval`, built into
<data>/features_eval if missing), `training.train` (timed), `training.evaluate` on the
test split for the fusion model and every baseline, then `training.export` (median of
`--export-repeats` runs, parity check included). With `--cold-run F` a second model is
trained with F of the items hidden and its ColdHR@10 is reported. Prints one markdown
table and the timings; nothing is asserted.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

from core import schema
from training import data, features
from training.config import TrainConfig, add_config_arguments, config_from_args
from training.evaluate import evaluate_run
from training.export import export_run
from training.train import train

log = logging.getLogger("benchmarks.model_quality")
COLUMNS = ("HR", "NDCG", "MRR", "TailHR", "HeadHR", "APLT", "Coverage", "Gini", "ARP")


def ensure_inputs(data_dir: Path, features_dir: Path) -> None:
    """Build the canonical tables and eval-mode features when they are missing."""
    if not (data_dir / schema.TRAIN_FILE).exists():
        data.run(data.parse_args(["--dataset", "movielens-100k", "--out", str(data_dir)]))
    if not (features_dir / schema.ITEM_FEATURES_FILE).exists():
        features.build_features(data_dir, features_dir, mode="eval")


def table(report: dict, k: int) -> str:
    """Markdown: one row per model, ranking metrics at k, AUC and fit time."""
    head = [f"{c}@{k}" for c in COLUMNS] + ["AUC"]
    lines = ["| model | " + " | ".join(head) + " |", "| --- |" + " ---: |" * len(head)]
    for name, m in report["models"].items():
        cells = [f"{m[c]:.4f}" if c in m and m[c] == m[c] else "-" for c in head]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model_quality", description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/movielens-100k"))
    parser.add_argument("--features", type=Path, default=None, help="default <data>/features_eval")
    parser.add_argument("--out", type=Path, default=Path("artifacts/ml-100k-quality"))
    parser.add_argument(
        "--cold-run", type=float, default=0.0, help="also train with this share of items hidden"
    )
    parser.add_argument("--export-repeats", type=int, default=3)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    features_dir = args.features or args.data / "features_eval"
    ensure_inputs(args.data, features_dir)
    config = config_from_args(args, TrainConfig(mode="eval"))
    started = time.perf_counter()
    summary = train(config, args.data, features_dir, args.out)
    train_seconds = time.perf_counter() - started
    report = evaluate_run(args.out, args.cold_run)
    export_times = []
    for _ in range(max(args.export_repeats, 1)):
        started = time.perf_counter()
        export_run(args.out, features_dir=features_dir)
        export_times.append(time.perf_counter() - started)
    print(table(report, config.k))
    print(
        f"\ntraining: {train_seconds:.1f} s wall (best epoch {summary['best_epoch']}, "
        f"early stopping included, device {summary['device']})"
    )
    print(f"export + parity check: median {statistics.median(export_times):.2f} s")
    cold = report.get("cold_run")
    if cold:
        k = config.k
        for name, m in cold["models"].items():
            print(f"cold run ({cold['fraction']:g} of items hidden) {name}: "
                  f"ColdHR@{k} {m.get(f'ColdHR@{k}', float('nan')):.4f} "
                  f"HR@{k} {m.get(f'HR@{k}', float('nan')):.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
