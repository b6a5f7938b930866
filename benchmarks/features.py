"""Benchmark: the features step and Feast apply + materialize (SQLite) per data set.

    python -m benchmarks.features [--datasets movielens-100k synthetic] [--n-items 100000]

Per data set it builds the canonical tables (``training.data``) if missing, measures the
encoder's throughput on up to ``--embed-sample`` item texts, runs the features step cold
(empty embedding cache) when the sample covers every text, and warm (every vector cached,
what a re-run costs) as the median of ``--repeats`` runs, then times ``feast apply`` +
``feast materialize`` into a fresh SQLite repo as ``make materialize`` runs them. When
the catalogue has more texts than the sample (the 100k synthetic catalogue on 2 CPU
cores), the cache is pre-filled with random unit vectors for the texts not encoded, and
the cold time is reported as an estimate: warm time + texts / measured throughput.
Prints one table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from core import schema
from training import data, encoder, feast_repo, features

log = logging.getLogger("benchmarks.features")
REPO_DIR = Path(__file__).resolve().parents[1] / "feature_repo"


def timed(fn: Callable[[], object], repeats: int = 1) -> tuple[float, object]:
    """Median wall seconds of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def ensure_tables(name: str, work: Path, args: argparse.Namespace) -> Path:
    """Canonical tables for a built-in data set, built once under ``work``."""
    if name != "synthetic" and (Path("data") / name / schema.INTERACTIONS_FILE).exists():
        return Path("data") / name  # `make data` already built it
    out = work / "data" / (name if name != "synthetic" else f"synthetic-{args.n_items}")
    if (out / schema.INTERACTIONS_FILE).exists():
        return out
    argv = ["--dataset", name, "--out", str(out)]
    if name == "synthetic":
        argv += ["--n-items", str(args.n_items), "--n-users", str(args.n_users)]
        argv += ["--n-events", str(args.n_events)]
    data.run(data.parse_args(argv))
    return out


def prefill_cache(texts: list[str], cache: Path, dim: int, rng: np.random.Generator) -> int:
    """Cache random unit vectors for texts not cached yet; return how many were added."""
    identity = encoder.cache_identity(
        encoder.encoder_identity(encoder.resolve_model_path(None)), encoder.DEFAULT_PRECISION
    )
    keys, vecs = encoder.load_cache(cache, identity)
    todo = pd.Index([encoder.text_key(t) for t in set(texts) if t.strip()]).difference(keys)
    fill = rng.standard_normal((len(todo), dim)).astype(np.float32)
    fill /= np.linalg.norm(fill, axis=1, keepdims=True)
    old = vecs if len(keys) else np.zeros((0, dim), dtype=np.float32)
    encoder.save_cache(cache, identity, keys.append(todo), np.vstack([old, fill]))
    return len(todo)


def bench_dataset(name: str, work: Path, args: argparse.Namespace) -> dict[str, object]:
    """All figures for one data set."""
    tables = ensure_tables(name, work, args)
    items = pd.read_parquet(tables / schema.ITEMS_FILE)
    texts = [t for t in features.item_text(items).tolist() if t]
    unique = sorted(set(texts))
    cache, out = work / f"cache-{name}", work / f"features-{name}"
    shutil.rmtree(cache, ignore_errors=True)
    row: dict[str, object] = {"dataset": name, "items": len(items), "texts": len(unique)}

    def build() -> dict:
        return features.build_features(tables, out, cache_dir=cache)

    if len(unique) <= args.embed_sample:  # every text encoded for real, cold then warm
        cold, _ = timed(build)
        warm, summary = timed(build, args.repeats)
        throughput = len(unique) / max(cold - warm, 1e-9)
        row["features_cold_s"] = round(cold, 1)
    else:  # encode a sample for the rate; random vectors stand in for the rest
        sample = list(np.random.default_rng(0).choice(unique, args.embed_sample, replace=False))
        encoder.load_text_encoder(str(encoder.resolve_model_path(None)))  # excludes loading
        secs, vecs = timed(lambda: encoder.embed_texts(sample, cache_dir=None))
        throughput = len(sample) / secs
        prefill_cache(unique, cache, vecs.shape[1], np.random.default_rng(0))
        warm, summary = timed(build, args.repeats)
        row["features_cold_s"] = f"~{warm + len(unique) / throughput:.0f} (est.)"
    row["encode_texts_per_s"] = round(throughput, 1)
    row["features_warm_s"] = round(warm, 1)
    row["users"] = summary["users"]
    row["apply_materialize_s"] = bench_feast(out, work / f"repo-{name}")
    return row


def bench_feast(features_dir: Path, repo: Path) -> float:
    """Seconds of apply + materialize (all rows) into a fresh SQLite repo, run the way
    `make materialize` runs them (``training.feast_repo``: the feast CLI, Feast's start-up
    of about 5 s on 2 cores included)."""
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "data").mkdir(parents=True)
    for file in [*REPO_DIR.glob("*.py"), *REPO_DIR.glob("*.yaml")]:
        shutil.copy2(file, repo / file.name)
    for name in (schema.ITEM_FEATURES_FILE, schema.USER_FEATURES_FILE):
        shutil.copy2(features_dir / name, repo / "data" / name)
    seconds, _ = timed(
        lambda: feast_repo.materialize_repo(repo, repo / "feature_store.yaml", repo / "data")
    )
    return round(seconds, 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.features", description=__doc__)
    p.add_argument("--datasets", nargs="+", default=["movielens-100k", "synthetic"],
                   choices=["movielens-100k", "synthetic"])  # fmt: skip
    p.add_argument("--n-items", type=int, default=100_000, help="synthetic catalogue size")
    p.add_argument("--n-users", type=int, default=20_000, help="synthetic users")
    p.add_argument("--n-events", type=int, default=1_000_000, help="synthetic events")
    p.add_argument("--embed-sample", type=int, default=2000, help="texts encoded at most")
    p.add_argument("--repeats", type=int, default=3, help="runs of the warm features step")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a temp dir)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    work = args.work or Path(tempfile.mkdtemp(prefix="tailrank-bench-features-"))
    rows = [bench_dataset(name, work, args) for name in args.datasets]
    table = pd.DataFrame(rows).set_index("dataset")
    print(table.to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
