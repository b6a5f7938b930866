"""The features step with random content vectors, for scale runs that measure everything
but the sentence encoder (``benchmarks.scale --random-content``).

    python -m benchmarks.random_features --data artifacts/scale/1m/data \\
        --out artifacts/scale/1m/features [--mode eval]

Runs ``training.features.build_features`` (item statistics, histories, user features,
the same files and checks) with the text encoder replaced by seeded random unit vectors
of the encoder's width (384), one per item text in catalogue order, so the serve-mode
and eval-mode feature sets of one catalogue get the same vectors. The features summary's
``encoder`` says ``random``, and nothing built from it says anything about quality: it
exists because encoding 1M texts takes hours on 2 CPU cores (the encoder's own
texts/s is measured at 10k and 100k items, where the real encoder runs).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from core import schema
from core.files import write_json_atomic
from training import features

log = logging.getLogger("benchmarks.random_features")
DIM = 384  # all-MiniLM-L6-v2's width
RANDOM_ENCODER = "random (benchmarks.random_features: content vectors not from text)"


def random_vectors(texts, stats=None, **_ignored) -> np.ndarray:
    """[len(texts), DIM] float32 unit vectors, seeded, zeros for empty texts."""
    rng = np.random.default_rng(0)
    out = np.empty((len(texts), DIM), dtype=np.float32)
    for start in range(0, len(texts), 100_000):  # float32 draws: no float64 [I, C] copy
        block = rng.standard_normal((min(100_000, len(texts) - start), DIM), np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1)[:, None]
    empty = np.array([not (isinstance(t, str) and t.strip()) for t in texts])
    out[empty] = 0.0
    if stats is not None:
        stats.encoded += int((~empty).sum())
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="canonical tables")
    parser.add_argument("--out", type=Path, required=True, help="features folder to write")
    parser.add_argument("--mode", choices=("serve", "eval"), default="serve")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    features.embed_texts = random_vectors  # the one call build_item_features makes
    summary = features.build_features(args.data, args.out, mode=args.mode, cache_dir=None)
    summary["encoder"] = RANDOM_ENCODER
    write_json_atomic(args.out / schema.FEATURES_SUMMARY_FILE, summary)
    log.info("wrote %s (random content vectors)", args.out)


if __name__ == "__main__":
    main()
