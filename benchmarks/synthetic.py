"""The synthetic serving setup the serving benchmarks use when no artifacts are built.

A materialized copy of ``feature_repo/`` with random item content vectors, Zipf counts and
50-item histories, and an untrained FusionCTR of the default size exported as
``training.export`` does. Used by ``benchmarks.serving`` and ``benchmarks.eventlog``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from core import schema

ROOT = Path(__file__).resolve().parents[1]


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
        schema.HISTORY_TS: [list(range(hist)) for _ in range(n_users)],
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

    repo, model = tmp / "feature_repo", tmp / "model"
    stamp = tmp / "setup.json"
    want = {"items": n_items, "users": n_users, "new_share": new_share, "user_view": 2}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return repo, model
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(model, ignore_errors=True)
    model.mkdir(parents=True)
    materialized_repo(repo, lambda data: synthetic_features(data, n_items, n_users, hist=50))
    items = [f"i{k}" for k in range(n_items - round(n_items * new_share))]
    synthetic_model(model, items, [f"u{k}" for k in range(n_users)])
    stamp.write_text(json.dumps(want))
    return repo, model


def materialized_repo(repo: Path, write_features) -> Path:
    """A copy of feature_repo/'s definitions at ``repo`` whose ``data/`` ``write_features``
    fills with the Feast sources, applied and materialized (SQLite); returns ``repo``."""
    import shutil

    from training.feast_repo import materialize_repo

    (repo / "data").mkdir(parents=True)
    for file in [*(ROOT / "feature_repo").glob("*.py"), ROOT / "feature_repo/feature_store.yaml"]:
        shutil.copy2(file, repo / file.name)
    write_features(repo / "data")
    materialize_repo(repo, repo / "feature_store.yaml", repo / "data")
    return repo


def add_encoder_summary(features: Path) -> None:
    """Let a server upsert into the synthetic shop (which has no features step): the
    summary the step would write, with the default sentence encoder's ONNX graph and the
    title as the one text column (the shop's vectors are random; upserted ones are not)."""
    from training.encoder import encoder_description
    from training.features import encoder_graph

    info = encoder_description(None)
    summary = {"encoder": {**info, **encoder_graph(info)},
               "item_columns": {"text": [schema.TITLE], "numeric": []}}  # fmt: skip
    (features / schema.FEATURES_SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
