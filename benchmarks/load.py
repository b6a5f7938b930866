"""The Rank load generator of the serving benchmarks (runs in its own process).

``drive``: a closed loop, N threads each sending the next call when its last one
returned. ``open_loop``: calls sent at a fixed rate whatever the answers, the way
independent users arrive, so overload shows as refusals and latency rather than as a
slower sender. Both spread their calls over several connections when asked (with
``--processes`` the kernel gives each connection to one worker) and report the CPU the
generator itself used, in cores. ``make_calls`` builds the Rank calls.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core import schema


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


def percentiles_ms(latencies: list[float]) -> dict[str, float]:
    return {
        "p50_ms": float(np.percentile(latencies, 50) * 1e3) if latencies else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99) * 1e3) if latencies else float("nan"),
    }
