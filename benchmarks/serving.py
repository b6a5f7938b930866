"""Serving benchmark: Rank latency and throughput, item cache vs the naive Feast path.

    python -m benchmarks.serving                  # MovieLens artifacts when built, else synthetic
    python -m benchmarks.serving --repo feature_repo --model artifacts/movielens-100k \\
        --fs-yaml feature_repo/data/movielens-100k/feature_store.yaml
    python -m benchmarks.serving --synthetic --concurrency 1,4,16 --repeats 3
    python -m benchmarks.serving --synthetic --concurrency 1 --repeats 5 --skip-naive \\
        --new-items 0.1 --setup-dir /tmp/tailrank-bench   # 10% candidates new to the model

Two real servers run in this process on loopback: the normal one (item features from the
in-process cache) and the naive one (``item_cache=False``: every candidate's and history
item's features come from ``get_online_features`` on each request). A load generator in a
separate process (multiprocessing, spawn) sends Rank calls with ``--candidates`` candidates
for users with full histories, at each concurrency level, and measures client-side
latency. Figures are medians over ``--repeats`` runs. Two more rows split the cost: the
Rank handler called in-process (no gRPC, no client) and the ONNX Runtime run alone; the
last lines give served p50 / ORT-alone p50 (the share of a request that is not the model).

``--new-items F`` makes a share F of the synthetic catalogue unknown to the model (in the
online store, not in the vocabulary: products added since training) and of every call's
candidates. ``--setup-dir`` keeps the synthetic setup so runs of two code versions (e.g.
a worktree of main with this file copied in) compare on the same data.
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
        "--new-items", type=float, default=0.0,
        help="share of synthetic items (and of each call's candidates) in the store but not "
        "in the model vocabulary",
    )  # fmt: skip
    p.add_argument("--setup-dir", type=Path, help="build the synthetic setup here once, reuse it")
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


def build_synthetic(
    tmp: Path, n_items: int, n_users: int, new_share: float = 0.0
) -> tuple[Path, Path]:
    """A materialized Feast repo (copy of feature_repo/) and a model dir under ``tmp``; the
    last ``new_share`` of the items are in the store but not in the model's vocabulary.
    A setup already built in ``tmp`` (same sizes) is reused."""
    import shutil

    from training.feast_repo import materialize_repo

    repo, model = tmp / "feature_repo", tmp / "model"
    stamp = tmp / "setup.json"
    want = {"items": n_items, "users": n_users, "new_share": new_share}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return repo, model
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(model, ignore_errors=True)
    (repo / "data").mkdir(parents=True)
    model.mkdir()
    for file in [*(ROOT / "feature_repo").glob("*.py"), ROOT / "feature_repo/feature_store.yaml"]:
        shutil.copy2(file, repo / file.name)
    synthetic_features(repo / "data", n_items, n_users, hist=50)
    materialize_repo(repo, repo / "feature_store.yaml", repo / "data")
    items = [f"i{k}" for k in range(n_items - round(n_items * new_share))]
    synthetic_model(model, items, [f"u{k}" for k in range(n_users)])
    stamp.write_text(json.dumps(want))
    return repo, model


# --- load generator (runs in the child process) ----------------------------------------
def drive(target: str, calls: list[tuple[str, list[str]]], concurrency: int) -> dict:
    """Send ``calls`` with ``concurrency`` threads; return latencies (s) and wall time."""
    import grpc

    from serving.api.tailrank.v1 import ranking_pb2, ranking_pb2_grpc

    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = ranking_pb2_grpc.RankingServiceStub(channel)
    requests = [ranking_pb2.RankRequest(user_id=u, candidate_ids=c, top_k=20) for u, c in calls]
    for req in requests[:3]:  # warm the channel
        stub.Rank(req, timeout=30)
    latencies: list[float] = []
    lock, cursor = threading.Lock(), iter(requests)

    def worker() -> None:
        while True:
            with lock:
                req = next(cursor, None)
            if req is None:
                return
            start = time.perf_counter()
            stub.Rank(req, timeout=30)
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    channel.close()
    return {"latencies": latencies, "wall": wall}


# --- orchestration -----------------------------------------------------------------------
def features_dir(repo: Path, fs_yaml: Path | None) -> Path:
    """The store's Parquet sources: beside a data set's own config (training.feast_repo
    writes it into the data set's features folder), else the repo's data/."""
    return fs_yaml.parent if fs_yaml is not None else repo / "data"


def make_calls(
    model_dir: Path, features: Path, n: int, n_cands: int, new_share: float = 0.0, seed: int = 1
) -> list:
    """Rank calls for users with full histories and random candidates: a share
    ``new_share`` of them items of the store that the model's vocabulary lacks."""
    vocab = json.loads((model_dir / "vocab.json").read_text())
    users = pd.read_parquet(features / schema.USER_FEATURES_FILE)
    users = users[users[schema.HISTORY].map(len) >= 50][schema.USER_ID].astype(str).tolist()
    users = users or [str(u) for u in vocab["users"]]
    n_new = round(n_cands * new_share)
    new: list[str] = []
    if n_new:
        stored = pd.read_parquet(features / schema.ITEM_FEATURES_FILE, columns=[schema.ITEM_ID])
        new = sorted(set(stored[schema.ITEM_ID].astype(str)) - set(vocab["items"]))
        if len(new) < n_new:
            raise SystemExit(f"--new-items: the store has {len(new)} items new to the model")
    rng = random.Random(seed)
    return [
        (rng.choice(users), rng.sample(vocab["items"], n_cands - n_new) + rng.sample(new, n_new))
        for _ in range(n)
    ]


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
        if args.synthetic or args.new_items or not (model / "manifest.json").is_file():
            log.info("synthetic setup: %d items (%.0f%% new to the model), %d users",
                     args.items, 100 * args.new_items, args.users)  # fmt: skip
            where = args.setup_dir or Path(tmp)
            repo, model = build_synthetic(where, args.items, args.users, args.new_items)
            args.fs_yaml = None
        rows = run(args, repo, model)
        floor = model_only(model, args)
    table = pd.DataFrame(rows).set_index(["path", "concurrency"])
    levels = [int(c) for c in args.concurrency.split(",")]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    new = f", {100 * args.new_items:.0f}% new to the model" if args.new_items else ""
    print(f"Rank, {args.candidates} candidates{new}, 50-item histories, model {model}")
    print(f"{os.cpu_count()} CPUs, load average at the end {load}, ort_threads {args.ort_threads}")
    print(table.round(2).to_string())
    print(f"ONNX Runtime run alone: p50 {floor['p50_ms']:.2f} ms, p99 {floor['p99_ms']:.2f} ms")
    handler = table.loc[("handler", 1), "p50_ms"]
    served = table.loc[("cache", levels[0]), "p50_ms"]
    print(f"served p50 / ORT-alone p50 at concurrency {levels[0]}: {served / floor['p50_ms']:.2f}"
          f" (handler alone / ORT: {handler / floor['p50_ms']:.2f})")  # fmt: skip
    if not args.skip_naive:
        ratio = table.loc["cache", "rps"] / table.loc["naive", "rps"]  # handler row has no rps
        print("throughput cache/naive by concurrency:", ratio.round(1).to_dict())


if __name__ == "__main__":
    main()
