"""Export the sentence encoder to ONNX once, check it against PyTorch, cache the graphs.

``ensure_graph(model_dir, precision)`` returns ``<onnx_dir>/<encoder identity>/
encoder-{fp32,int8}.onnx``, writing it first if missing. The graph replicates the packaged
SentenceTransformer's modules (``modules.json``: Transformer -> mean Pooling -> Normalize):
inputs ``input_ids`` and ``attention_mask`` (int64 [batch, tokens], both axes dynamic),
output ``sentence_embedding`` (float32 [batch, dim], unit length). token_type_ids are
zeros inside the graph, as for any single-sentence input. Exporter:
``torch.onnx.export(dynamo=False)`` at opset 17, as ``training.export``. The fp32 graph is
only written after ONNX Runtime matches ``SentenceTransformer.encode`` (cosine >=
``PARITY_COSINE`` on every text, several batch sizes); the int8 graph is ONNX Runtime's
dynamic quantization of it (int8 weights, as ``training.quantize`` does for the
ranking model; not imported from there: it would close an import cycle).

Imported by ``training.encoder``; the run-time half lives in ``core.textenc``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from core import textenc as text_runtime
from core.files import write_atomic

log = logging.getLogger(__name__)

OPSET = 17
PARITY_COSINE = 0.9999
DEFAULT_ONNX_DIR = Path("data/cache/text-onnx")
PARITY_TEXTS = (
    "Toy Story (1995)",
    "title: Zebra striped umbrella; category: home",
    "a",
    "The quick brown fox jumps over the lazy dog. " * 12,  # long: truncation path
    "Ünïcödé — and emoji 🚀 in a title; genres: Sci-Fi|Action; year: 2001",
)


class EncoderExportError(RuntimeError):
    """The encoder cannot be exported faithfully; the message says why and what to do."""


class PooledEncoder(nn.Module):
    """Transformer -> masked mean over tokens -> optional L2 normalisation."""

    def __init__(self, transformer: nn.Module, normalize: bool) -> None:
        super().__init__()
        self.transformer = transformer
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        )[0]
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=1)
        return pooled


def _check_modules(model_dir: Path) -> bool:
    """True when the model ends in Normalize; error for pipelines the graph cannot copy."""
    modules_file = model_dir / "modules.json"
    if not modules_file.exists():  # a bare transformers folder: sentence-transformers
        return False  # adds mean pooling and no normalisation
    kinds = [m["type"].rsplit(".", 1)[-1] for m in json.loads(modules_file.read_text())]
    if kinds[:2] != ["Transformer", "Pooling"] or set(kinds[2:]) - {"Normalize"}:
        raise EncoderExportError(
            f"{model_dir} has modules {kinds}; the ONNX export handles Transformer -> "
            "Pooling (mean) [-> Normalize] only: use backend='torch' for this encoder"
        )
    pooling = next(m for m in json.loads(modules_file.read_text()) if m["idx"] == 1)
    config = json.loads((model_dir / pooling["path"] / "config.json").read_text())
    modes = [k for k, v in config.items() if k.startswith("pooling_mode") and v is True]
    if modes != ["pooling_mode_mean_tokens"]:
        raise EncoderExportError(
            f"{model_dir} pools with {modes}; the ONNX export handles mean pooling only: "
            "use backend='torch' for this encoder"
        )
    return "Normalize" in kinds


def graph_path(model_dir: Path, identity: str, precision: str, onnx_dir: Path | None) -> Path:
    """Where the graph of this encoder identity and precision lives."""
    if precision not in text_runtime.GRAPH_FILES:
        raise ValueError(f"precision must be one of {sorted(text_runtime.GRAPH_FILES)}")
    root = DEFAULT_ONNX_DIR if onnx_dir is None else Path(onnx_dir)
    return root / identity / text_runtime.GRAPH_FILES[precision]


def export_fp32(st_model, model_dir: Path, path: Path) -> None:
    """Trace, check against ``st_model.encode``, then write ``path`` atomically."""
    normalize = _check_modules(model_dir)
    wrapper = PooledEncoder(st_model[0].auto_model, normalize).eval()
    tokenizer = text_runtime.load_tokenizer(model_dir)
    example = tokenizer.encode_batch(["a first example", "second"])
    width = max(len(e.ids) for e in example)
    ids = torch.tensor([e.ids + [0] * (width - len(e.ids)) for e in example])
    mask = (torch.arange(width)[None, :] < torch.tensor([[len(e.ids)] for e in example])).long()

    def write(tmp: Path) -> None:
        with torch.no_grad():
            torch.onnx.export(
                wrapper, (ids, mask), str(tmp), dynamo=False, opset_version=OPSET,
                input_names=list(text_runtime.INPUT_NAMES),
                output_names=[text_runtime.OUTPUT_NAME],
                dynamic_axes={
                    text_runtime.INPUT_NAMES[0]: {0: "batch", 1: "tokens"},
                    text_runtime.INPUT_NAMES[1]: {0: "batch", 1: "tokens"},
                    text_runtime.OUTPUT_NAME: {0: "batch"},
                },
            )  # fmt: skip
        onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)
        worst = parity(st_model, text_runtime.OnnxTextEncoder(tmp, model_dir, "cpu"))
        if worst < PARITY_COSINE:
            raise EncoderExportError(
                f"ONNX encoder differs from PyTorch (cosine {worst:.6f} < {PARITY_COSINE}); "
                "nothing was written: use backend='torch'"
            )
        log.info("text encoder ONNX parity: min cosine %.7f", worst)

    write_atomic(path, write)


def parity(st_model, onnx_encoder: text_runtime.OnnxTextEncoder) -> float:
    """Smallest cosine between torch and ONNX vectors over ``PARITY_TEXTS``, batched
    one by one and all together (padding must not change a vector)."""
    texts = list(PARITY_TEXTS)
    ref = st_model.encode(texts, batch_size=len(texts), show_progress_bar=False)
    worst = 1.0
    for batch_size in (1, len(texts)):
        got = onnx_encoder.encode(texts, batch_size=batch_size)
        worst = min(worst, float(cosines(ref, got).min()))
    return worst


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    dot = (a * b).sum(1)
    return dot / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def ensure_graph(
    st_loader, model_dir: Path, identity: str, precision: str, onnx_dir: Path | None = None
) -> Path:
    """The cached graph for (encoder identity, precision); exported on first use.

    ``st_loader()`` returns the SentenceTransformer; it is called only when exporting."""
    path = graph_path(model_dir, identity, precision, onnx_dir)
    if path.exists():
        return path
    fp32 = graph_path(model_dir, identity, "fp32", onnx_dir)
    fp32.parent.mkdir(parents=True, exist_ok=True)
    if not fp32.exists():
        log.info("exporting the sentence encoder to %s (once per encoder)", fp32)
        export_fp32(st_loader(), model_dir, fp32)
    if precision == "int8" and not path.exists():
        write_atomic(path, lambda tmp: quantize_int8(fp32, tmp))
    return path


def quantize_int8(fp32: Path, int8: Path) -> None:
    """ONNX Runtime dynamic quantization: int8 weights, one scale per output channel
    (per-tensor scales cost MiniLM too much: mean cosine to torch 0.963 vs 0.993),
    activations quantized per run."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # the quantizer logs a line per tensor on the root logger
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
