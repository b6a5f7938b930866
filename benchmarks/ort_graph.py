"""Benchmark: ONNX Runtime time of the fusion graph, with and without the sequence encoder.

    python -m benchmarks.ort_graph                       # seq_layers 0 vs 1, MovieLens sizes
    python -m benchmarks.ort_graph --variants 0 1 2 --candidates 200 --history 50 --rounds 6

What one Rank call pays in ONNX Runtime depends on the graph, not on trained weights, so
each variant is a randomly initialised FusionCTR (the default TrainConfig with
``seq_layers`` set) exported by ``training.export.export_onnx`` (the same exporter, opset
and dynamic axes as a real export). One CPU session per variant, built by the server's
own ``serving.inference._session`` (1 intra-op thread), scores the export's random parity
input (``training.export.parity_cases``: one user, ``--history`` items, ``--candidates``
candidates); the variants are timed in alternation, ``--rounds`` times, so a drifting
machine load hits each alike. Prints the median ms per run and the graph's node count.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

from serving.inference import _session
from training.config import TrainConfig
from training.export import export_onnx, parity_cases
from training.model import build_model

log = logging.getLogger("benchmarks.ort_graph")


def variant(layers: int, args: argparse.Namespace, tmp: Path):
    """(server-built CPU session, node count, random contract feeds) of one variant."""
    torch.manual_seed(0)
    config = TrainConfig(content_dim=args.content_dim, seq_layers=layers)
    model = build_model(config, args.users, args.items, torch.arange(args.items + 1.0)).eval()
    path = tmp / f"seq{layers}.onnx"
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        export_onnx(model, path)
    sess, _ = _session(path, "cpu", threads=1)  # exactly as the server builds it
    cases = parity_cases(model, None, sizes=(args.candidates,), lengths=(args.history,))
    return sess, len(onnx.load(str(path)).graph.node), next(iter(cases))[1]


def time_runs(sess: ort.InferenceSession, inputs: dict, runs: int) -> float:
    """Mean milliseconds per run over `runs` runs."""
    start = time.perf_counter()
    for _ in range(runs):
        sess.run(None, inputs)
    return (time.perf_counter() - start) / runs * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.ort_graph",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--variants", type=int, nargs="+", default=[0, 1], help="seq_layers values")
    p.add_argument("--candidates", type=int, default=200, help="candidates per run (N)")
    p.add_argument("--history", type=int, default=50, help="history items (L)")
    p.add_argument("--users", type=int, default=943, help="user vocabulary size")
    p.add_argument("--items", type=int, default=1679, help="item vocabulary size")
    p.add_argument("--content-dim", type=int, default=384, help="content vector size (C)")
    p.add_argument("--runs", type=int, default=300, help="runs per timing")
    p.add_argument("--rounds", type=int, default=6, help="alternating timings per variant")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="tailrank-ort-") as tmp:
        sessions = {v: variant(v, args, Path(tmp)) for v in args.variants}
        for sess, _, inputs in sessions.values():  # warm-up: allocations, first-run kernels
            time_runs(sess, inputs, 50)
        times: dict[int, list[float]] = {v: [] for v in args.variants}
        for _ in range(args.rounds):
            for v, (sess, _, inputs) in sessions.items():
                times[v].append(time_runs(sess, inputs, args.runs))
    print(f"ONNX Runtime CPU, 1 thread, N={args.candidates}, L={args.history}")
    print("| seq_layers | nodes | ms per run, median [range] |")
    print("| ---: | ---: | ---: |")
    for v, (_, nodes, _) in sessions.items():
        t = times[v]
        print(f"| {v} | {nodes} | {statistics.median(t):.3f} [{min(t):.3f}-{max(t):.3f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
