"""Benchmark: the sentence encoder, torch vs ONNX Runtime fp32 vs ONNX Runtime int8.

    python -m benchmarks.encoder [--data data/movielens-100k] [--rounds 3] [--batch-size 64]

Three text sets: the MovieLens-100K item texts (``training.features.item_text``; the
tables are built with ``training.data`` under ``--work`` if ``--data`` has none), the
synthetic shop's item texts (title, category, brand, price, description) and long texts
(four shop texts joined, ~100+ tokens). Each variant encodes every text of a set once per
round; within a round the variants alternate every ``--chunk`` texts (order rotated each
step), so a busy neighbour on the shared cores hits all of them alike. texts/s is the
median over rounds; ``x_torch`` the median over steps of torch's time / the variant's. Quality is
the cosine of each variant's vector to the torch vector (mean, min) and the mean overlap
of each text's 10 nearest neighbours (cosine, in the same set) with torch's. Loading and
the one-off ONNX export are outside the timings. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core import schema
from training import data, encoder, features, synthetic, text_onnx

log = logging.getLogger("benchmarks.encoder")
VARIANTS = {
    "torch": ("torch", "fp32"),
    "onnx-fp32": ("onnx", "fp32"),
    "onnx-int8": ("onnx", "int8"),
}


def text_sets(args: argparse.Namespace, work: Path) -> dict[str, list[str]]:
    """name -> distinct non-empty texts."""
    tables = args.data
    if not (tables / schema.ITEMS_FILE).exists():
        tables = work / "movielens-100k"
        if not (tables / schema.ITEMS_FILE).exists():
            data.run(data.parse_args(["--dataset", "movielens-100k", "--out", str(tables)]))
    ml = features.item_text(pd.read_parquet(tables / schema.ITEMS_FILE)).tolist()
    shop = features.item_text(synthetic.generate_items(args.n_shop, np.random.default_rng(0)))
    shop_texts = shop.tolist()
    long = ["  ".join(shop_texts[i : i + 4]) for i in range(0, args.n_long * 4, 4)]
    unique = {k: sorted({t for t in v if t.strip()}) for k, v in
              {"movielens-100k": ml, "shop": shop_texts, "shop-long": long}.items()}  # fmt: skip
    return unique


def neighbour_overlap(ref: np.ndarray, got: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each row's k nearest neighbours (cosine, self excluded) shared."""

    def top(v: np.ndarray) -> np.ndarray:
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        sims = v @ v.T
        np.fill_diagonal(sims, -np.inf)
        return np.argpartition(-sims, k, axis=1)[:, :k]

    a, b = top(ref), top(got)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def bench_set(name: str, texts: list[str], models: dict, args: argparse.Namespace) -> list[dict]:
    """Rounds over every text; within a round the variants alternate chunk by chunk (order
    rotated per chunk), so a burst of the neighbour's load hits all of them; one row per
    variant. ``x_torch`` is the median over chunks of torch's time / the variant's."""
    times: dict[str, list[float]] = {v: [] for v in models}
    ratios: dict[str, list[float]] = {v: [] for v in models}
    vectors = {v: np.zeros((len(texts), models[v].dim), np.float32) for v in models}
    order, turn = list(models), 0
    for _ in range(args.rounds):
        spent = dict.fromkeys(models, 0.0)
        for lo in range(0, len(texts), args.chunk):
            chunk, took = texts[lo : lo + args.chunk], {}
            for v in order[turn % len(order) :] + order[: turn % len(order)]:
                start = time.perf_counter()
                vectors[v][lo : lo + args.chunk] = models[v].encode(chunk, args.batch_size)
                took[v] = time.perf_counter() - start
            turn += 1
            for v in models:
                spent[v] += took[v]
                ratios[v].append(took["torch"] / took[v])
        for v in models:
            times[v].append(spent[v])
    tokens = [len(e.ids) for e in models["onnx-fp32"].tokenizer.encode_batch(texts)]
    rows = []
    for v in models:
        rate = len(texts) / statistics.median(times[v])
        spread = f"{len(texts) / max(times[v]):.0f}-{len(texts) / min(times[v]):.0f}"
        cos = text_onnx.cosines(vectors["torch"], vectors[v])
        rows.append({
            "set": name, "texts": len(texts), "median_tokens": int(np.median(tokens)),
            "variant": v, "texts_per_s": round(rate, 1),
            "range": spread,
            "x_torch": round(statistics.median(ratios[v]), 2),
            "cos_mean": round(float(cos.mean()), 5), "cos_min": round(float(cos.min()), 5),
            "top10_overlap": round(neighbour_overlap(vectors["torch"], vectors[v]), 3),
        })  # fmt: skip
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.encoder", description=__doc__)
    p.add_argument("--data", type=Path, default=Path("data/movielens-100k"),
                   help="MovieLens-100K tables (built under --work if missing)")  # fmt: skip
    p.add_argument("--n-shop", type=int, default=1000, help="synthetic shop texts")
    p.add_argument("--n-long", type=int, default=200, help="long texts (4 shop texts each)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over each set")
    p.add_argument("--chunk", type=int, default=128, help="texts per alternation step")
    p.add_argument("--batch-size", type=int, default=encoder.DEFAULT_BATCH_SIZE)
    p.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a temp dir)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    work = args.work or Path(tempfile.mkdtemp(prefix="tailrank-bench-encoder-"))
    path = str(encoder.resolve_model_path(None))
    models = {
        v: encoder.load_text_encoder(path, backend, precision, str(work / "onnx"), args.provider)
        for v, (backend, precision) in VARIANTS.items()
    }
    for model in models.values():
        model.encode(["warm-up text", "a second, longer warm-up text"], args.batch_size)
    print(f"load average at start: {os.getloadavg()}; cpus: {os.cpu_count()}; "
          f"ONNX provider: {models['onnx-fp32'].provider}")  # fmt: skip
    rows = [r for name, texts in text_sets(args, work).items()
            for r in bench_set(name, texts, models, args)]  # fmt: skip
    print(pd.DataFrame(rows).set_index(["set", "variant"]).to_string())
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
