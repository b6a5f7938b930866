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
Rank handler called in-process (no gRPC, no client) and the ONNX Runtime run alone.

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
import json
import logging
import os
import random
import statistics
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from core import schema
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


# --- synthetic setup -------------------------------------------------------------------
def synthetic_features(out: Path, n_items: int, n_users: int, hist: int, seed: int = 0) -> None:
    """Random content vectors, Zipf counts, 50-item histories, in the Feast source schema."""
    rng = np.random.default_rng(seed)
    now = pd.Timestamp.now(tz="UTC").floor("s")
    items = [f"i{k}" for k in range(n_items)]
    counts = pd.Series(rng.zipf(1.3, n_items).clip(0, 5000), index=items)
    is_tail = schema.head_tail_flags(counts)
    vecs = rng.normal(size=(n_items, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    pd.DataFrame({
        schema.ITEM_ID: items, schema.EVENT_TIMESTAMP: now, schema.CONTENT_VEC: list(vecs),
        schema.HAS_TEXT: 1, schema.INTERACTION_COUNT: counts.to_numpy(np.int64),
        schema.POPULARITY_RANK: counts.rank(ascending=False, method="first").astype(np.int64),
        schema.IS_TAIL: is_tail.to_numpy(np.int64), schema.FIRST_SEEN: now - pd.Timedelta(days=9),
        schema.TITLE: [f"Item {k}" for k in range(n_items)],
    }).to_parquet(out / schema.ITEM_FEATURES_FILE)  # fmt: skip
    histories = [list(rng.choice(items, size=hist, replace=False)) for _ in range(n_users)]
    pd.DataFrame({
        schema.USER_ID: [f"u{k}" for k in range(n_users)], schema.EVENT_TIMESTAMP: now,
        schema.HISTORY: histories, schema.HISTORY_LEN: hist, schema.USER_ATTRIBUTES: "{}",
    }).to_parquet(out / schema.USER_FEATURES_FILE)  # fmt: skip


def synthetic_model(out: Path, items: list[str], users: list[str]) -> None:
    """An untrained FusionCTR of the default size, exported like training.export does."""
    from core import contract
    from training.config import TrainConfig
    from training.export import export_onnx
    from training.model import build_model

    config = TrainConfig()
    export_onnx(build_model(config, len(users), len(items)).eval(), out / contract.ONNX_FILE)
    (out / contract.VOCAB_FILE).write_text(json.dumps({"users": users, "items": items}))
    manifest = {
        "format_version": contract.FORMAT_VERSION, "model_version": "synthetic-untrained",
        "onnx_file": contract.ONNX_FILE, "vocab_file": contract.VOCAB_FILE,
        "content_dim": config.content_dim, "history_len": config.history_len,
        "feature_refs": contract.FEATURE_REFS, **contract.manifest_io(config.content_dim),
    }  # fmt: skip
    (out / contract.MANIFEST_FILE).write_text(json.dumps(manifest))


def build_synthetic(tmp: Path, n_items: int, n_users: int) -> tuple[Path, Path]:
    """A materialized Feast repo (copy of feature_repo/) and a model dir under ``tmp``."""
    import shutil

    from training.feast_repo import materialize_repo

    repo, model = tmp / "feature_repo", tmp / "model"
    (repo / "data").mkdir(parents=True)
    model.mkdir()
    for file in [*(ROOT / "feature_repo").glob("*.py"), ROOT / "feature_repo/feature_store.yaml"]:
        shutil.copy2(file, repo / file.name)
    synthetic_features(repo / "data", n_items, n_users, hist=50)
    materialize_repo(repo, repo / "feature_store.yaml", repo / "data")
    items = [f"i{k}" for k in range(n_items)]
    synthetic_model(model, items, [f"u{k}" for k in range(n_users)])
    return repo, model


# --- load generator (runs in the child process) ----------------------------------------
def stubs(target: str, n: int) -> list:
    """``n`` stubs on ``n`` connections: with --processes the kernel picks a worker per
    connection, so one connection would reach one process only."""
    import grpc

    from serving.api.tailrank.v1 import ranking_pb2_grpc

    out = []
    for _ in range(n):
        channel = grpc.insecure_channel(target, [("grpc.use_local_subchannel_pool", 1)])
        grpc.channel_ready_future(channel).result(timeout=30)
        out.append(ranking_pb2_grpc.RankingServiceStub(channel))
    return out


def drive(
    target: str, calls: list[tuple[str, list[str]]], concurrency: int, channels: int = 1
) -> dict:
    """Send ``calls`` with ``concurrency`` threads (thread i on connection i % channels);
    return latencies (s), wall time and the CPU this process used (cores)."""
    from serving.api.tailrank.v1 import ranking_pb2

    clients = stubs(target, channels)
    requests = [ranking_pb2.RankRequest(user_id=u, candidate_ids=c, top_k=20) for u, c in calls]
    for stub in clients:  # warm every connection
        stub.Rank(requests[0], timeout=30)
    latencies: list[float] = []
    lock, cursor = threading.Lock(), iter(requests)

    def worker(stub) -> None:
        while True:
            with lock:
                req = next(cursor, None)
            if req is None:
                return
            start = time.perf_counter()
            stub.Rank(req, timeout=30)
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [
        threading.Thread(target=worker, args=(clients[i % channels],)) for i in range(concurrency)
    ]
    cpu, start = time.process_time(), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"latencies": latencies, "wall": wall, "client_cpu": (time.process_time() - cpu) / wall}


def open_loop(
    target: str, calls: list[tuple[str, list[str]]], rate: float, seconds: float, channels: int
) -> dict:
    """Send Rank at ``rate`` calls/s for ``seconds`` whatever the answers (open loop), over
    ``channels`` connections; latencies of the accepted calls, counts by status code."""
    import grpc

    from serving.api.tailrank.v1 import ranking_pb2

    clients = stubs(target, channels)
    requests = [ranking_pb2.RankRequest(user_id=u, candidate_ids=c, top_k=20) for u, c in calls]
    latencies: list[float] = []
    codes: dict[str, int] = {}
    lock, futures = threading.Lock(), []

    def done(sent: float, future) -> None:
        code = future.code()
        with lock:
            codes[code.name] = codes.get(code.name, 0) + 1
            if code is grpc.StatusCode.OK:
                latencies.append(time.perf_counter() - sent)

    n = int(rate * seconds)
    cpu, start = time.process_time(), time.perf_counter()
    for k in range(n):
        wait = start + k / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        sent = time.perf_counter()
        future = clients[k % channels].Rank.future(requests[k % len(requests)], timeout=5)
        future.add_done_callback(lambda f, sent=sent: done(sent, f))
        futures.append(future)
    sending = time.perf_counter() - start
    for future in futures:
        future.exception()  # wait for every answer
    wall = time.perf_counter() - start
    return {"latencies": latencies, "codes": codes, "sent": n, "rate": n / sending,
            "client_cpu": (time.process_time() - cpu) / wall}  # fmt: skip


# --- orchestration -----------------------------------------------------------------------
def features_dir(repo: Path, fs_yaml: Path | None) -> Path:
    """The store's Parquet sources: beside a data set's own config (training.feast_repo
    writes it into the data set's features folder), else the repo's data/."""
    return fs_yaml.parent if fs_yaml is not None else repo / "data"


def make_calls(model_dir: Path, features: Path, n: int, n_cands: int, seed: int = 1) -> list:
    """Rank calls for users with full histories and random vocab candidates."""
    vocab = json.loads((model_dir / "vocab.json").read_text())
    users = pd.read_parquet(features / schema.USER_FEATURES_FILE)
    users = users[users[schema.HISTORY].map(len) >= 50][schema.USER_ID].astype(str).tolist()
    users = users or [str(u) for u in vocab["users"]]
    rng = random.Random(seed)
    return [(rng.choice(users), rng.sample(vocab["items"], n_cands)) for _ in range(n)]


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


def percentiles_ms(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": float(np.percentile(latencies, 50) * 1e3) if latencies else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99) * 1e3) if latencies else float("nan"),
    }


def run(args: argparse.Namespace, repo: Path, model: Path) -> list[dict]:
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    paths = [("cache", True, args.requests)] + (
        [] if args.skip_naive else [("naive", False, args.naive_requests)]
    )
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        for name, cache, n in paths:
            server, target, servicer = start(repo, model, cache, args)
            calls = make_calls(model, features_dir(repo, args.fs_yaml), n, args.candidates)
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
    from benchmarks.eventlog import bench_serving

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
    repo, model = (
        args.repo or ROOT / "feature_repo",
        args.model or ROOT / "artifacts/movielens-100k",
    )
    made = ROOT / "feature_repo" / "data" / model.name / "feature_store.yaml"  # make's layout
    if args.fs_yaml is None and args.repo is None and made.is_file():
        args.fs_yaml = made
    with tempfile.TemporaryDirectory(prefix="tailrank-bench-") as tmp:
        if args.synthetic or not (model / "manifest.json").is_file():
            log.info("building a synthetic setup (%d items, %d users)", args.items, args.users)
            repo, model = build_synthetic(Path(tmp), args.items, args.users)
            args.fs_yaml = None
        rows = run(args, repo, model)
        floor = model_only(model, args)
        deployment = [] if args.skip_deployment else deployment_rows(args, repo, model, tmp)
    table = pd.DataFrame(rows).set_index(["path", "concurrency"])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"Rank, {args.candidates} candidates, 50-item histories, model {model}")
    print(f"{os.cpu_count()} CPUs, load average at the end {load}, ort_threads {args.ort_threads}")
    print(table.round(2).to_string())
    print(f"ONNX Runtime run alone: p50 {floor['p50_ms']:.2f} ms, p99 {floor['p99_ms']:.2f} ms")
    served = table.loc[("cache", 1), "p50_ms"]
    print(f"served p50 at 1 in flight / ORT alone p50: {served / floor['p50_ms']:.2f}x")
    print("\n".join(deployment))
    if not args.skip_naive:
        ratio = table.loc["cache", "rps"] / table.loc["naive", "rps"]  # handler row has no rps
        print("throughput cache/naive by concurrency:", ratio.round(1).to_dict())


if __name__ == "__main__":
    main()
