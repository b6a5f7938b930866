"""Benchmark: the three online stores, SQLite, PostgreSQL and Redis, on the synthetic shop.

    python -m benchmarks.stores [--items 10000] [--users 2000] [--stores sqlite postgres redis]

One synthetic data set (``benchmarks.synthetic``: random content vectors, Zipf counts,
50-item histories) and one untrained model of the default size. Per store, from that
store's template in feature_repo/ made the data set's own (``training.feast_repo``, what
``make materialize-store STORE=...`` runs, a fresh Feast project per run):

- ``apply+materialize s``: wall seconds of ``feast apply`` + ``feast materialize`` (the
  CLI in one child process, Feast's start-up of ~5 s included), every row;
- ``rank p50/p99 ms``: Rank at 1 in flight, ``--candidates`` candidates, client in a
  separate process, server in this one (``benchmarks.serving.start``, item table on);
- ``history p50/p99 ms``: the user-history read alone (``FeatureClient.user_history``,
  the one online-store read on every Rank once the item table is loaded).

PostgreSQL reads TAILRANK_PG_* (default 127.0.0.1:5432, database ``test``, user
``postgres``), Redis TAILRANK_REDIS_* (default 127.0.0.1:6379). The run's Feast objects
(tables, keys) are removed at the end with ``feast teardown``'s API. Prints one table.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.load import make_calls
from benchmarks.serving import measure, start
from benchmarks.synthetic import synthetic_features, synthetic_model
from core import schema
from training import feast_repo

log = logging.getLogger("benchmarks.stores")
REPO_DIR = Path(__file__).resolve().parents[1] / "feature_repo"
TEMPLATES = {
    "sqlite": "feature_store.yaml",
    "postgres": "feature_store.postgres.yaml",
    "redis": "feature_store.redis.yaml",
}
PG_DEFAULTS = {"TAILRANK_PG_HOST": "127.0.0.1", "TAILRANK_PG_PORT": "5432",
               "TAILRANK_PG_DB": "test", "TAILRANK_PG_USER": "postgres",
               "TAILRANK_PG_PASSWORD": ""}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.stores",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--items", type=int, default=10_000, help="synthetic catalogue size")
    p.add_argument("--users", type=int, default=2_000, help="synthetic users")
    p.add_argument("--stores", nargs="+", default=list(TEMPLATES), choices=list(TEMPLATES))
    p.add_argument("--candidates", type=int, default=200, help="candidates per Rank call")
    p.add_argument("--requests", type=int, default=300, help="Rank calls per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per store; medians reported")
    p.add_argument("--history-reads", type=int, default=500, help="user-history reads")
    p.add_argument("--ort-threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--workers", type=int, default=16, help="server worker threads")
    return p.parse_args(argv)


def materialize(store: str, work: Path, features: Path, name: str) -> tuple[Path, Path, float]:
    """A fresh repo for ``store``; returns (repo, the data set's config, seconds)."""
    repo = work / f"repo-{store}"
    (repo / "data").mkdir(parents=True)
    for file in [*REPO_DIR.glob("*.py"), *REPO_DIR.glob("*.yaml")]:
        shutil.copy2(file, repo / file.name)
    folder = repo / "data" / name
    shutil.copytree(features, folder)
    fs_yaml = feast_repo.write_dataset_config(repo / TEMPLATES[store], repo, folder, name)
    begin = time.perf_counter()
    feast_repo.materialize_repo(repo, fs_yaml, folder)
    return repo, fs_yaml, time.perf_counter() - begin


def history_reads(servicer, users: list[str], n: int) -> dict[str, float]:
    """p50/p99 (ms) of ``n`` user-history reads, users taken in turn."""
    times = []
    for k in range(n):
        begin = time.perf_counter()
        servicer.features.user_history(users[k % len(users)])
        times.append((time.perf_counter() - begin) * 1e3)
    return {"history_p50_ms": float(np.median(times)),
            "history_p99_ms": float(np.percentile(times, 99))}  # fmt: skip


def bench_store(store: str, args, work: Path, features: Path, model: Path, pool) -> dict:
    name = f"bench_{store}_{uuid.uuid4().hex[:8]}"
    repo, fs_yaml, seconds = materialize(store, work, features, name)
    log.info("%s: apply + materialize %.1f s", store, seconds)
    run_args = argparse.Namespace(fs_yaml=fs_yaml, ort_threads=args.ort_threads,
                                  workers=args.workers)  # fmt: skip
    server, target, servicer = start(repo, model, True, run_args)
    try:
        calls = make_calls(model, fs_yaml.parent, args.requests, args.candidates)
        rank = measure(pool, target, calls, 1, args.repeats)
        history = history_reads(servicer, [u for u, _ in calls], args.history_reads)
    finally:
        servicer.shutting_down()
        server.stop(0).wait()
        try:
            servicer.features.store.teardown()  # the run's tables / keys / registry
        except Exception as exc:  # a leftover project is harmless; say so and go on
            log.warning("teardown of %s failed: %r", name, exc)
    return {"store": store, "apply+materialize s": round(seconds, 1),
            "rank p50 ms": rank["p50_ms"], "rank p99 ms": rank["p99_ms"],
            "history p50 ms": history["history_p50_ms"],
            "history p99 ms": history["history_p99_ms"]}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("serving").setLevel(logging.WARNING)
    for var, value in PG_DEFAULTS.items():
        os.environ.setdefault(var, value)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tailrank-stores-") as tmp:
        work = Path(tmp)
        features, model = work / "features", work / "model"
        features.mkdir()
        model.mkdir()
        synthetic_features(features, args.items, args.users, hist=50)
        items = pd.read_parquet(features / schema.ITEM_FEATURES_FILE)[schema.ITEM_ID].tolist()
        synthetic_model(model, items, [f"u{k}" for k in range(args.users)])
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            for store in args.stores:
                rows.append(bench_store(store, args, work, features, model, pool))
                log.info("%s", rows[-1])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"Online stores: {args.items} items, {args.users} users (50-item histories), Rank "
        f"of {args.candidates} candidates at 1 in flight, medians of {args.repeats} runs"
    )
    print(f"{os.cpu_count()} CPUs, load average at the end {load}")
    print(pd.DataFrame(rows).set_index("store").round(2).to_string())


if __name__ == "__main__":
    main()
