"""Serving benchmark: Rank latency and throughput, item cache vs the naive Feast path.

    python -m benchmarks.serving                  # MovieLens artifacts when built, else synthetic
    python -m benchmarks.serving --repo feature_repo --model artifacts/movielens-100k \\
        --fs-yaml feature_repo/data/movielens-100k/feature_store.yaml
    python -m benchmarks.serving --synthetic --concurrency 1,4,16 --repeats 3

Two real servers run in this process on loopback: the normal one (item features from the
in-process cache) and the naive one (``item_cache=False``: every candidate's and history
item's features come from ``get_online_features`` on each request). A load generator in a
separate process (multiprocessing, spawn) sends Rank calls with ``--candidates`` candidates
for users with full histories, at each concurrency level, and measures client-side
latency. Figures are medians over ``--repeats`` runs. Two more rows split the cost: the
Rank handler called in-process (no gRPC, no client) and the ONNX Runtime run alone; a
line gives served p50 / ORT-alone p50 (the share of a request that is not the model).

``--new-items F`` makes a share F of the synthetic catalogue unknown to the model (in the
online store, not in the vocabulary: products added since training) and of every call's
candidates. ``--setup-dir`` keeps the synthetic setup so runs of two code versions
compare on the same data.

Then the deployment as shipped, ``python -m serving`` started as a real subprocess
(``benchmarks.processes``): requests/s at 8 in flight with ``--processes 1`` and with
``--processes N``, the overload row (an open-loop load at twice the multi-process
saturation rate: p50/p99 of the accepted calls and the share refused with
RESOURCE_EXHAUSTED), and logging on vs off (``benchmarks.eventlog``'s ``--serving``
measurement at 1 and 8 in flight). Each row says how much CPU the load generator used
(its process CPU time over the run's wall time, in cores): it shares the machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.load import drive, features_dir, make_calls
from benchmarks.synthetic import build_synthetic
from serving.config import ServerConfig
from serving.server import RankingServicer, create_server

log = logging.getLogger("benchmarks.serving")
ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_setup_args(p)
    p.add_argument("--candidates", type=int, default=200, help="candidates per Rank call")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    p.add_argument("--requests", type=int, default=300, help="calls per run (cached path)")
    p.add_argument("--naive-requests", type=int, default=40, help="calls per run (naive path)")
    p.add_argument("--repeats", type=int, default=3, help="runs per level; medians reported")
    p.add_argument("--ort-threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--workers", type=int, default=16, help="server worker threads")
    p.add_argument("--skip-naive", action="store_true", help="only the cached path")
    p.add_argument(
        "--processes", type=int, default=len(os.sched_getaffinity(0)),
        help="worker processes of the multi-process server (default: the cores)",
    )  # fmt: skip
    p.add_argument(
        "--server-workers", type=int, default=ServerConfig().workers,
        help="--workers of the subprocess servers (default: the server's default)",
    )  # fmt: skip
    p.add_argument("--process-requests", type=int, default=1500, help="calls per run, 8 in flight")
    p.add_argument("--overload-s", type=float, default=6.0, help="seconds of open-loop load")
    p.add_argument("--log-requests", type=int, default=600, help="calls per logging on/off run")
    p.add_argument("--skip-deployment", action="store_true", help="no processes/overload/log rows")
    return p.parse_args(argv)


def add_setup_args(p: argparse.ArgumentParser) -> None:
    """The flags that choose the served artifacts (``setup``); shared by benchmarks.soak
    and benchmarks.fuzz."""
    p.add_argument("--repo", type=Path, help="materialized Feast repo (default: feature_repo)")
    p.add_argument(
        "--fs-yaml",
        type=Path,
        help="the data set's Feast config (default: make's, feature_repo/data/<model's "
        "data set>/feature_store.yaml, when it exists)",
    )
    p.add_argument("--model", type=Path, help="run dir with manifest.json + model.onnx")
    p.add_argument("--synthetic", action="store_true", help="build a synthetic setup in tmp")
    p.add_argument("--items", type=int, default=1682, help="synthetic catalogue size")
    p.add_argument("--users", type=int, default=943, help="synthetic users")
    p.add_argument(
        "--new-items", type=float, default=0.0,
        help="share of synthetic items (and of each call's candidates) in the store but not "
        "in the model vocabulary",
    )  # fmt: skip
    p.add_argument("--setup-dir", type=Path, help="build the synthetic setup here once, reuse it")


def setup(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path]:
    """(repo, model) to serve: ``--repo``/``--model``, else make's MovieLens-100K artifacts
    when built, else the synthetic setup (built in ``--setup-dir`` or ``tmp``). Sets
    ``args.fs_yaml`` to the matching Feast config (None: the repo's own)."""
    repo, model = (
        args.repo or ROOT / "feature_repo",
        args.model or ROOT / "artifacts/movielens-100k",
    )
    made = ROOT / "feature_repo" / "data" / model.name / "feature_store.yaml"  # make's layout
    if args.fs_yaml is None and args.repo is None and made.is_file():
        args.fs_yaml = made
    if args.synthetic or args.new_items or not (model / "manifest.json").is_file():
        log.info("synthetic setup: %d items (%.0f%% new to the model), %d users",
                 args.items, 100 * args.new_items, args.users)  # fmt: skip
        repo, model = build_synthetic(args.setup_dir or tmp, args.items, args.users,
                                      args.new_items)  # fmt: skip
        args.fs_yaml = None
    return repo, model


# --- orchestration -----------------------------------------------------------------------
def start(repo: Path, model: Path, cache: bool, args: argparse.Namespace):
    from serving.__main__ import build_servicer

    config = ServerConfig(
        repo=repo, fs_yaml=args.fs_yaml, model=model, host="127.0.0.1", port=0,
        item_cache=cache, ort_threads=args.ort_threads, workers=args.workers,
        event_log_url=None,
    )  # fmt: skip
    servicer: RankingServicer = build_servicer(config)
    servicer.start()
    server, port = create_server(config, servicer)
    return server, f"127.0.0.1:{port}", servicer


def measure(pool, target: str, calls: list, level: int, repeats: int) -> dict[str, float]:
    runs = [pool.submit(drive, target, calls, level).result() for _ in range(repeats)]
    p50 = [np.percentile(r["latencies"], 50) * 1e3 for r in runs]
    p99 = [np.percentile(r["latencies"], 99) * 1e3 for r in runs]
    rps = [len(r["latencies"]) / r["wall"] for r in runs]
    return {"p50_ms": statistics.median(p50), "p99_ms": statistics.median(p99),
            "rps": statistics.median(rps)}  # fmt: skip


def model_only(model_dir: Path, args: argparse.Namespace, runs: int = 200) -> dict[str, float]:
    """The ONNX Runtime run alone (N candidates, 50 history items): the floor of a Rank call."""
    from core import contract
    from serving.inference import Model

    model = Model(model_dir, provider="cpu", threads=args.ort_threads)
    n, length, dim = args.candidates, 50, model.content_dim
    rng = np.random.default_rng(0)
    feed = contract.build_feed(
        1, np.arange(1, length + 1), rng.random((length, dim)), np.arange(1, n + 1),
        rng.random((n, dim)), np.ones(n),
    )  # fmt: skip
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.score(feed)
        times.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": float(np.median(times)), "p99_ms": float(np.percentile(times, 99))}


def handler_only(servicer: RankingServicer, calls: list) -> dict[str, float]:
    """The Rank handler called in-process (Feast user row + cache + ORT + re-rank), no gRPC."""
    from serving.api.tailrank.v1 import ranking_pb2

    times = []
    for user, cands in calls:
        request = ranking_pb2.RankRequest(user_id=user, candidate_ids=cands, top_k=20)
        start = time.perf_counter()
        servicer._rank(request)
        times.append((time.perf_counter() - start) * 1e3)
    return {"p50_ms": float(np.median(times)), "p99_ms": float(np.percentile(times, 99))}


def run(args: argparse.Namespace, repo: Path, model: Path) -> list[dict]:
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    paths = [("cache", True, args.requests)] + (
        [] if args.skip_naive else [("naive", False, args.naive_requests)]
    )
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        for name, cache, n in paths:
            server, target, servicer = start(repo, model, cache, args)
            calls = make_calls(
                model, features_dir(repo, args.fs_yaml), n, args.candidates, args.new_items
            )
            if cache:
                rows.append({"path": "handler", "concurrency": 1, **handler_only(servicer, calls)})
            for level in levels:
                figures = measure(pool, target, calls, level, args.repeats)
                rows.append({"path": name, "concurrency": level, **figures})
                log.info("%s", rows[-1])
            server.stop(0).wait()
    return rows


def deployment_rows(args: argparse.Namespace, repo: Path, model: Path, tmp: str) -> list[str]:
    """Single- vs multi-process, overload and logging on/off lines (see the docstring)."""
    from benchmarks import processes
    from benchmarks.eventlog import bench_serving  # imports benchmarks.load, not this module

    calls = make_calls(model, features_dir(repo, args.fs_yaml), args.process_requests,
                       args.candidates)  # fmt: skip
    lines = processes.compare(args, repo, model, calls)
    cpus = os.sched_getaffinity(0)
    log_args = argparse.Namespace(
        fs_yaml=args.fs_yaml, requests=args.log_requests, candidates=args.candidates,
        pin=True, log_url=None, workers=args.workers, concurrency=[1, 8],
        repeats=args.repeats,
    )  # fmt: skip
    lines += ["", "Logging on vs off (benchmarks.eventlog --serving, two in-process servers):"]
    lines += bench_serving(log_args, repo, model, Path(tmp))
    os.sched_setaffinity(0, cpus)
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("serving").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="tailrank-bench-") as tmp:
        repo, model = setup(args, Path(tmp))
        rows = run(args, repo, model)
        floor = model_only(model, args)
        deployment = [] if args.skip_deployment else deployment_rows(args, repo, model, tmp)
    table = pd.DataFrame(rows).set_index(["path", "concurrency"])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    new = f", {100 * args.new_items:.0f}% new to the model" if args.new_items else ""
    print(f"Rank, {args.candidates} candidates{new}, 50-item histories, model {model}")
    print(f"{os.cpu_count()} CPUs, load average at the end {load}, ort_threads {args.ort_threads}")
    print(table.round(2).to_string())
    print(f"ONNX Runtime run alone: p50 {floor['p50_ms']:.2f} ms, p99 {floor['p99_ms']:.2f} ms")
    served = table.loc[("cache", 1), "p50_ms"]
    handler = table.loc[("handler", 1), "p50_ms"]
    print(f"served p50 at 1 in flight / ORT alone p50: {served / floor['p50_ms']:.2f}x "
          f"(handler alone / ORT: {handler / floor['p50_ms']:.2f}x)")  # fmt: skip
    print("\n".join(deployment))
    if not args.skip_naive:
        ratio = table.loc["cache", "rps"] / table.loc["naive", "rps"]  # handler row has no rps
        print("throughput cache/naive by concurrency:", ratio.round(1).to_dict())


if __name__ == "__main__":
    main()
