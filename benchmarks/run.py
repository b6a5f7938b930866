"""Run every benchmark recorded in docs/BENCHMARKS.md, one after another (`make bench`).

    python -m benchmarks.run                      # all of them (tens of minutes on 2 cores)
    python -m benchmarks.run --only serving eventlog
    python -m benchmarks.run --list
    python -m benchmarks.run --only scale         # opt-in: not part of a plain run

Each benchmark runs as its own process with the arguments docs/BENCHMARKS.md quotes, so
a figure there can be reproduced by copying one line of this table. Benchmarks print their
figures; nothing is asserted. Exit status: 0 when every selected benchmark exited 0.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time

log = logging.getLogger("benchmarks.run")

# name -> (what it measures, argv after `python -m`)
BENCHMARKS: dict[str, tuple[str, list[str]]] = {
    "model_quality": (
        "fusion model vs baselines on MovieLens-100K (protocol of DESIGN.md), ColdHR run",
        [
            "benchmarks.model_quality",
            "--data",
            "data/movielens-100k",
            "--out",
            "artifacts/ml-100k-quality",
            "--cold-run",
            "0.1",
        ],
    ),
    "features": (
        "features step and feast apply/materialize on MovieLens-100K",
        ["benchmarks.features", "--datasets", "movielens-100k", "--repeats", "3"],
    ),
    "encoder": (
        "sentence encoder: torch vs ONNX Runtime fp32 vs int8, alternating, cosine to torch",
        ["benchmarks.encoder", "--data", "data/movielens-100k", "--rounds", "3"],
    ),
    "features_100k": (
        "features step and materialize on a synthetic 100k-item catalogue",
        [
            "benchmarks.features",
            "--datasets",
            "synthetic",
            "--n-items",
            "100000",
            "--n-users",
            "20000",
            "--n-events",
            "1000000",
            "--embed-sample",
            "384",
            "--repeats",
            "3",
        ],
    ),
    "eval_cost": (
        "full-catalogue scoring + ranking: seconds per user and peak RSS at 100k and 1M items",
        ["benchmarks.eval_cost", "--n-items", "100000", "1000000"],
    ),
    "train_step": (
        "seconds per training step at 10k, 100k, 1M items: full/sampled softmax, dense/sparse",
        [
            "benchmarks.train_step",
            "--n-items",
            "10000",
            "100000",
            "1000000",
            "--steps",
            "12",
            "--threads",
            "1",
        ],
    ),  # fmt: skip
    "shortlist": (
        "evaluation with a shortlist vs exact full ranking (needs model_quality's run first)",
        [
            "benchmarks.shortlist",
            "--run",
            "artifacts/ml-100k-quality",
            "--shortlist",
            "50",
            "100",
            "200",
            "500",
        ],
    ),  # fmt: skip
    "serving": (
        "Rank p50/p99/throughput, item cache vs naive per-request Feast lookups",
        ["benchmarks.serving", "--concurrency", "1,4,16", "--repeats", "3"],
    ),
    "freshness": (
        "Feedback -> the user's history in the online store, as the next Rank reads it",
        ["benchmarks.freshness"],
    ),
    "cold_upsert": (
        "ColdHR@10 through UpsertItems + Rank vs offline (needs an eval run with --cold-items)",
        ["benchmarks.cold_upsert", "--run", "artifacts/ml-cold"],
    ),
    "ort_graph": (
        "ONNX Runtime time of the fusion graph with and without the sequence encoder",
        ["benchmarks.ort_graph"],
    ),
    "eventlog": (
        "event-log rows written per second (SQLite, PostgreSQL)",
        ["benchmarks.eventlog", "--rows", "50000", "--repeats", "5"],
    ),
    "eventlog_serving": (
        "serving throughput with the exposure log on vs off",
        [
            "benchmarks.eventlog",
            "--serving",
            "--repo",
            "feature_repo",
            "--fs-yaml",
            "feature_repo/data/movielens-100k/feature_store.yaml",
            "--model",
            "artifacts/movielens-100k",
            "--requests",
            "2000",
            "--repeats",
            "9",
            "--concurrency",
            "1",
            "8",
        ],
    ),
    "scale": (
        "synthetic shop at 10k items through data -> serving, each stage timed (opt-in)",
        [
            "benchmarks.scale",
            "--sizes",
            "10k",
            "--train-steps",
            "200",
            "--json",
            "artifacts/scale/scale-10k.json",
        ],
    ),  # fmt: skip
    "fuzz": (
        "10,000 Hypothesis-drawn requests of every RPC against a real server: codes, INTERNAL",
        ["benchmarks.fuzz", "--cases", "10000", "--json", "artifacts/fuzz/fuzz-10000.json"],
    ),
    "soak": (
        "80% of peak Rank throughput for 10 min: errors, p99 over time, RSS growth (opt-in)",
        ["benchmarks.soak", "--duration", "600", "--json", "artifacts/soak/soak-600.json"],
    ),
}
# run only when named with --only: they take long (benchmarks.scale: 10-15 min at 10k,
# benchmarks.soak: 10 min plus start-up, and both keep the machine busy)
OPT_IN = {"scale", "cold_upsert", "soak"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Run the benchmarks recorded in docs/BENCHMARKS.md, in sequence.",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"run only these ({', '.join(BENCHMARKS)}; {', '.join(OPT_IN)} only when named)",
    )
    p.add_argument("--list", action="store_true", help="print the benchmarks and their commands")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    selected = args.only or [name for name in BENCHMARKS if name not in OPT_IN]
    if args.list:  # every benchmark, the opt-in ones too
        for name in args.only or BENCHMARKS:
            what, cmd = BENCHMARKS[name]
            print(f"{name:18s} {what}\n{'':18s} python -m {' '.join(cmd)}")
        return 0
    failed = []
    for name in selected:
        what, cmd = BENCHMARKS[name]
        log.info("%s: %s\n  python -m %s", name, what, " ".join(cmd))
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", *cmd])
        log.info("%s: exit %d after %.0f s", name, rc, time.perf_counter() - start)
        if rc != 0:
            failed.append(name)
    if failed:
        log.error("failed: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
