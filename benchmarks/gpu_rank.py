"""Benchmark: one Rank's ONNX Runtime run over many candidates, CUDA provider vs CPU.

    python -m benchmarks.gpu_rank [--model artifacts/movielens-100k] [--candidates 2000]
        [--runs 200] [--ort-threads 1]

Builds the server's own sessions (``serving.inference._session``: explicit providers, a
silent CUDA -> CPU fall back is an error) for ``--provider cpu`` and ``--provider cuda``
over the same ONNX file, feeds both the same random contract feeds (one user, a full
50-item history, ``--candidates`` candidates), checks they agree, and prints the p50/p99
of each and the CPU/CUDA ratio. Without ``--model`` an untrained model of the default
size is exported into a temp folder (needs torch). On a machine without the CUDA
provider it says so and times the CPU alone; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from core import contract
from core.providers import CUDA
from serving.errors import ConfigError
from serving.inference import Model, _session


def time_session(session: ort.InferenceSession, feeds: list[dict], runs: int) -> list[float]:
    """Milliseconds per run, cycling over ``feeds`` (the first 10 runs are warm-up)."""
    times = []
    for i in range(runs + 10):
        start = time.perf_counter()
        session.run(list(contract.OUTPUT_NAMES), feeds[i % len(feeds)])
        if i >= 10:
            times.append((time.perf_counter() - start) * 1e3)
    return times


def summary(times: list[float]) -> str:
    return f"p50 {statistics.median(times):.3f} ms, p99 {np.percentile(times, 99):.3f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_rank", description=__doc__)
    parser.add_argument("--model", type=Path, help="run dir (default: untrained, exported)")
    parser.add_argument("--candidates", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--ort-threads", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tailrank-gpu-") as tmp:
        model_dir = args.model
        if model_dir is None:
            from benchmarks.serving import synthetic_model

            model_dir = Path(tmp)
            synthetic_model(
                model_dir, [f"i{k}" for k in range(5000)], [f"u{k}" for k in range(1000)]
            )
        model = Model(model_dir, provider="cpu", threads=args.ort_threads)
        onnx_path = model_dir / model.manifest.onnx_file
        rng = np.random.default_rng(0)
        n_items, n_users = len(model.item_index), len(model.user_index)
        feeds = [
            contract.random_feed(rng, n_users, n_items, model.content_dim, args.candidates, 50)
            for _ in range(8)
        ]
        cpu = time_session(model.session, feeds, args.runs)
        print(f"{args.candidates} candidates, {args.runs} runs, onnxruntime {ort.__version__}")
        print(f"CPU  ({args.ort_threads} thread(s)): {summary(cpu)}")
        if CUDA not in ort.get_available_providers():
            print("CUDA provider not available here (make install-gpu on a GPU machine)")
            return 0
        try:
            gpu_session, running = _session(onnx_path, "cuda", args.ort_threads)
        except ConfigError as exc:
            print(f"CUDA provider could not run this model: {exc}")
            return 1
        want = model.session.run(["prob"], feeds[0])[0]
        got = gpu_session.run(["prob"], feeds[0])[0]
        gpu = time_session(gpu_session, feeds, args.runs)
        print(f"CUDA ({running}): {summary(gpu)}; max |prob diff| vs CPU "
              f"{float(np.abs(want - got).max()):.2e}")  # fmt: skip
        print(f"CPU / CUDA p50 ratio: {statistics.median(cpu) / statistics.median(gpu):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
