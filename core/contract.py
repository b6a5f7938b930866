"""The model contract between ``training.export`` (writes) and ``serving`` (reads), in one place.

One ONNX run scores one user and N candidates (docs/ARCHITECTURE.md section 3):

| input | dtype | shape | meaning |
| --- | --- | --- | --- |
| ``user_idx`` | int64 | [1] | user vocabulary index, 0 = unknown (cold) user |
| ``hist_idx`` | int64 | [1, L] | history item indices, oldest first, 0 = unknown/padding |
| ``hist_content`` | float32 | [1, L, C] | content vectors of the history items |
| ``hist_mask`` | float32 | [1, L] | 1 = real history item, 0 = padding |
| ``item_idx`` | int64 | [N] | candidate indices, 0 = unknown (new) item |
| ``item_content`` | float32 | [N, C] | candidate content vectors |
| ``item_count`` | float32 | [N] | candidates' interaction counts (the model applies log1p) |

Outputs: ``logit`` and ``prob`` (sigmoid of logit), float32 [N]. ``L >= 1`` always: a
user without history is one padding slot with mask 0 (``build_feed`` does this).

A run directory holds ``MANIFEST_FILE``, the ONNX graph it names and ``VOCAB_FILE``
(``{"users": [...], "items": [...]}``, an id's index is its position + 1, 0 is the
reserved unknown row). ``Manifest.read`` refuses a manifest with a missing or mistyped
field (``MANIFEST_FIELDS``) instead of guessing a default.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import schema


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of the graph: numpy dtype name and shape (str = dynamic axis)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


INPUTS = (
    TensorSpec("user_idx", "int64", (1,)),
    TensorSpec("hist_idx", "int64", (1, "L")),
    TensorSpec("hist_content", "float32", (1, "L", "C")),
    TensorSpec("hist_mask", "float32", (1, "L")),
    TensorSpec("item_idx", "int64", ("N",)),
    TensorSpec("item_content", "float32", ("N", "C")),
    TensorSpec("item_count", "float32", ("N",)),
)
OUTPUTS = (TensorSpec("logit", "float32", ("N",)), TensorSpec("prob", "float32", ("N",)))
# Optional: graphs exported since 2026-12-02 have it, older ones still serve (no explanations).
# Each candidate's target-attention weights over the history (row sums 1, 0 when empty).
EXPLAIN_OUTPUTS = (TensorSpec("attention", "float32", ("N", "L")),)
ATTENTION = EXPLAIN_OUTPUTS[0].name
INPUT_NAMES = tuple(spec.name for spec in INPUTS)
OUTPUT_NAMES = tuple(spec.name for spec in OUTPUTS)
EXPORT_OUTPUT_NAMES = OUTPUT_NAMES + tuple(spec.name for spec in EXPLAIN_OUTPUTS)
DYNAMIC_AXES = {  # name -> {axis: symbol} for the exporter (C is fixed per model)
    spec.name: {axis: dim for axis, dim in enumerate(spec.shape) if dim in ("N", "L")}
    for spec in INPUTS + OUTPUTS + EXPLAIN_OUTPUTS
    if "N" in spec.shape or "L" in spec.shape
}

# --- run directory ------------------------------------------------------------------
MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
VOCAB_FILE = "vocab.json"
# a probe feed and the outputs the export measured on it (serving re-runs it before a swap)
PROBE_FILE = "probe.npz"
PROBE_TOLERANCE = 1e-3  # max abs difference of logit / prob a reader accepts on the probe
FORMAT_VERSION = 1
DEFAULT_HISTORY_LEN = 50  # last N history items the model reads (training's default too)

# field -> type every manifest must have; the exporter writes more (metrics, config...)
MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "model_version": str,
    "onnx_file": str,
    "vocab_file": str,
    "inputs": list,
    "outputs": list,
    "content_dim": int,
    "history_len": int,
    "feature_refs": dict,
}

# --- features -----------------------------------------------------------------------
# What the model's feed and the re-ranker need from the online store, per view. Titles
# are for people (serving.client reads them itself); the server never needs them.
SERVING_USER_FIELDS = (schema.HISTORY,)
SERVING_ITEM_FIELDS = (schema.CONTENT_VEC, schema.INTERACTION_COUNT, schema.IS_TAIL)
FEATURE_REFS = {  # what the exporter records in the manifest
    "user": [f"{schema.USER_VIEW}:{schema.HISTORY}", f"{schema.USER_VIEW}:{schema.HISTORY_LEN}"],
    "item": [
        f"{schema.ITEM_VIEW}:{schema.CONTENT_VEC}",
        f"{schema.ITEM_VIEW}:{schema.HAS_TEXT}",
        f"{schema.ITEM_VIEW}:{schema.INTERACTION_COUNT}",
        f"{schema.ITEM_VIEW}:{schema.IS_TAIL}",
    ],
}

# ONNX Runtime's and ONNX's names for the dtypes the contract uses
ORT_TYPES = {"tensor(int64)": "int64", "tensor(float)": "float32"}
ONNX_ELEM_TYPES = {7: "int64", 1: "float32"}  # onnx.TensorProto.INT64 / FLOAT


class ContractError(ValueError):
    """A graph, manifest, vocabulary or feed breaks the contract; the message says what."""


def resolved_shape(spec: TensorSpec, content_dim: int) -> list[int | str]:
    """The spec's shape with C replaced by the model's content width."""
    return [content_dim if dim == "C" else dim for dim in spec.shape]


def manifest_io(content_dim: int) -> dict[str, list[dict]]:
    """The manifest's ``inputs`` and ``outputs`` entries for a model of width C."""
    return {
        key: [
            {"name": s.name, "dtype": s.dtype, "shape": resolved_shape(s, content_dim)}
            for s in specs
        ]
        for key, specs in (("inputs", INPUTS), ("outputs", OUTPUTS + EXPLAIN_OUTPUTS))
    }


def check_graph(
    inputs: Mapping[str, tuple[str, Sequence]],
    outputs: Mapping[str, tuple[str, Sequence]],
    content_dim: int,
) -> None:
    """Compare a graph's ``{name: (dtype, shape)}`` with the contract; ContractError lists
    every difference. Dtypes are numpy names (see ``ORT_TYPES``); a dynamic axis may
    carry any symbol (or None), a fixed one must match."""
    problems = []
    optional = {s.name for s in EXPLAIN_OUTPUTS}
    outputs_checked = OUTPUTS + tuple(s for s in EXPLAIN_OUTPUTS if s.name in outputs)
    for kind, specs, found in (("input", INPUTS, inputs), ("output", outputs_checked, outputs)):
        names = {s.name for s in specs}
        problems += [f"unexpected {kind} {n!r}" for n in sorted(set(found) - names - optional)]
        for spec in specs:
            if spec.name not in found:
                problems.append(f"{kind} {spec.name!r} is missing")
                continue
            dtype, shape = found[spec.name]
            want = resolved_shape(spec, content_dim)
            if dtype != spec.dtype:
                problems.append(f"{kind} {spec.name!r} is {dtype}, the contract says {spec.dtype}")
            if len(shape) != len(want) or any(
                isinstance(w, int) and d != w for d, w in zip(shape, want, strict=False)
            ):
                problems.append(f"{kind} {spec.name!r} has shape {list(shape)}, want {want}")
    if problems:
        raise ContractError("the graph breaks the model contract: " + "; ".join(problems))


@dataclass(frozen=True)
class Manifest:
    """The fields of ``manifest.json`` that a reader relies on, checked (plus the raw dict)."""

    model_version: str
    onnx_file: str
    vocab_file: str
    content_dim: int
    history_len: int
    feature_refs: dict[str, list[str]]
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "manifest") -> Manifest:
        """Check every field of ``MANIFEST_FIELDS``; ContractError names each bad one."""
        if not isinstance(raw, dict):
            raise ContractError(
                f"{source} is not a JSON object: re-run `python -m training.export`"
            )
        missing = [f for f in MANIFEST_FIELDS if f not in raw]
        wrong = [
            f"{f} ({type(raw[f]).__name__}, want {kind.__name__})"
            for f, kind in MANIFEST_FIELDS.items()
            if f in raw and (not isinstance(raw[f], kind) or isinstance(raw[f], bool))
        ]
        if missing or wrong:
            raise ContractError(
                f"{source} is missing fields {missing} or has mistyped fields {wrong}: it was "
                "written by another version; re-run `python -m training.export`"
            )
        if raw["format_version"] != FORMAT_VERSION:
            raise ContractError(
                f"{source} has format_version {raw['format_version']}, this tailrank reads "
                f"{FORMAT_VERSION}: re-export the run with this version"
            )
        names = [entry.get("name") for entry in raw["inputs"] if isinstance(entry, dict)]
        if sorted(names) != sorted(INPUT_NAMES):
            raise ContractError(f"{source} lists inputs {names}, the contract has {INPUT_NAMES}")
        if raw["content_dim"] < 1 or raw["history_len"] < 1:
            raise ContractError(f"{source}: content_dim and history_len must be >= 1")
        fields = {f: raw[f] for f in ("model_version", "onnx_file", "vocab_file")}
        return cls(
            **fields,
            content_dim=raw["content_dim"],
            history_len=raw["history_len"],
            feature_refs=raw["feature_refs"],
            raw=raw,
        )

    @classmethod
    def read(cls, run_dir: Path) -> Manifest:
        path = Path(run_dir) / MANIFEST_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ContractError(
                f"no {MANIFEST_FILE} in {run_dir}: run `python -m training.export`"
            ) from None
        except (OSError, ValueError) as exc:
            raise ContractError(f"{path} is unreadable ({exc}): re-run the export") from exc
        return cls.from_dict(raw, str(path))


def file_digest(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks (the manifest's ``files`` entries)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_files(run_dir: Path, manifest: Manifest) -> None:
    """ContractError unless the manifest lists the files it needs (its ONNX graph, the
    vocabulary, the probe) and each file on disk has the size and sha256 it records.

    The exporter writes the manifest last, so a match proves the export is complete: a
    reader never mixes a new graph with an old vocabulary, or loads a half-copied file.
    """
    files = manifest.raw.get("files")
    needed = (manifest.onnx_file, manifest.vocab_file, PROBE_FILE)
    if not isinstance(files, dict) or any(not isinstance(files.get(n), dict) for n in needed):
        raise ContractError(
            f"the manifest in {run_dir} does not list sha256 digests of {list(needed)}: it "
            "predates them; re-run `python -m training.export` on the run"
        )
    problems = []
    for name in needed:
        path, want = Path(run_dir) / name, files[name]
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{name} is missing")
            continue
        if size != want.get("bytes") or file_digest(path) != want.get("sha256"):
            problems.append(f"{name} ({size} bytes) differs from its manifest entry")
    if problems:
        raise ContractError(
            f"export {run_dir} is incomplete or damaged: "
            + "; ".join(problems)
            + ": wait for the export to finish, or export again"
        )


def save_probe(path: Path, feed: Mapping[str, np.ndarray], logit, prob) -> None:
    """Write a probe: a feed and the ``logit`` / ``prob`` the exported graph gave for it."""
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **feed, expected_logit=np.asarray(logit), expected_prob=np.asarray(prob))


def read_probe(run_dir: Path) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(feed, expected logit, expected prob) of a run's ``PROBE_FILE``; ContractError if
    it is missing or not a probe."""
    path = Path(run_dir) / PROBE_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            feed = {name: data[name] for name in INPUT_NAMES}
            return feed, data["expected_logit"], data["expected_prob"]
    except (OSError, ValueError, KeyError) as exc:
        raise ContractError(
            f"probe {path} is missing or unreadable ({exc}): re-run `python -m training.export`"
        ) from exc


def vocab_index(ids: Sequence[str]) -> dict[str, int]:
    """Id -> model row: position + 1 (row 0 is the reserved unknown/padding row)."""
    return {str(item): row for row, item in enumerate(ids, start=1)}


def read_vocab(run_dir: Path, manifest: Manifest) -> tuple[list[str], list[str]]:
    """(user ids, item ids) of the run's vocabulary, checked for shape."""
    path = Path(run_dir) / manifest.vocab_file
    try:
        vocab = json.loads(path.read_text())
        users, items = vocab["users"], vocab["items"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ContractError(
            f"vocabulary {path} is missing or unreadable ({exc}): re-run training for this run"
        ) from exc
    return [str(u) for u in users], [str(i) for i in items]


def build_feed(
    user_idx: int,
    hist_idx: np.ndarray,
    hist_content: np.ndarray,
    item_idx: np.ndarray,
    item_content: np.ndarray,
    item_count: np.ndarray,
    hist_mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The model feed for one user and N candidates, with the contract's dtypes and shapes.

    ``hist_idx`` [L], ``hist_content`` [L, C] and ``hist_mask`` [L] (default: all 1)
    describe the history, oldest first; ``item_*`` the N candidates. An empty history
    (L = 0) becomes one padding slot with mask 0, which the model scores finitely.
    """
    hist_idx = np.asarray(hist_idx, dtype=np.int64).reshape(-1)
    item_content = np.asarray(item_content, dtype=np.float32)
    if item_content.ndim != 2:
        raise ContractError(f"item_content must be [N, C], got shape {item_content.shape}")
    dim = item_content.shape[1]
    length = len(hist_idx)
    if length == 0:
        hist_idx = np.zeros(1, np.int64)
        hist_content = np.zeros((1, dim), np.float32)
        hist_mask = np.zeros(1, np.float32)
    elif hist_mask is None:
        hist_mask = np.ones(length, np.float32)
    feed = {
        "user_idx": np.array([user_idx], dtype=np.int64),
        "hist_idx": hist_idx[None, :],
        "hist_content": np.ascontiguousarray(hist_content, dtype=np.float32)[None, :, :],
        "hist_mask": np.asarray(hist_mask, dtype=np.float32).reshape(1, -1),
        "item_idx": np.asarray(item_idx, dtype=np.int64).reshape(-1),
        "item_content": np.ascontiguousarray(item_content),
        "item_count": np.asarray(item_count, dtype=np.float32).reshape(-1),
    }
    check_feed(feed, dim)
    return feed


def check_feed(feed: Mapping[str, np.ndarray], content_dim: int) -> None:
    """ContractError unless ``feed`` has exactly the inputs, each with its dtype and a shape
    consistent with the others (one N, one L, C = ``content_dim``)."""
    if set(feed) != set(INPUT_NAMES):
        raise ContractError(f"feed has inputs {sorted(feed)}, the contract has {INPUT_NAMES}")
    sizes = {"N": feed["item_idx"].shape[0], "L": feed["hist_idx"].shape[-1], "C": content_dim}
    for spec in INPUTS:
        arr, want = feed[spec.name], tuple(sizes.get(d, d) for d in spec.shape)
        if arr.dtype != np.dtype(spec.dtype) or arr.shape != want:
            raise ContractError(
                f"feed {spec.name!r} is {arr.dtype} {arr.shape}, want {spec.dtype} {want}"
            )


def random_feed(
    rng: np.random.Generator, n_users: int, n_items: int, content_dim: int, n: int, length: int
) -> dict[str, np.ndarray]:
    """A valid feed of random indices and content (warm-up, parity checks, benchmarks);
    ``length`` 0 gives the no-history padding slot."""
    content = rng.normal(size=(length, content_dim)) / np.sqrt(content_dim)
    return build_feed(
        int(rng.integers(0, n_users + 1)),
        rng.integers(0, n_items + 1, size=length),
        content,
        rng.integers(0, n_items + 1, size=n),
        rng.normal(size=(n, content_dim)) / np.sqrt(content_dim),
        rng.exponential(50.0, size=n),
    )
