"""The exported model: manifest + vocab + one ONNX Runtime session with explicit providers.

Reads the contract of docs/ARCHITECTURE.md section 3. Input names come from the session
itself; every request is one ``run`` for all of its candidates.

    python -c "from serving.inference import Model; print(Model.load('artifacts/x').provider)"
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.errors import ConfigError

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
INPUTS = ("user_idx", "hist_idx", "hist_content", "hist_mask", "item_idx", "item_content")
INPUTS += ("item_count",)
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def choose_providers(requested: str, available: list[str]) -> list[str]:
    """Providers to ask ORT for: ``auto`` = CUDA when available, else CPU."""
    if requested == "cpu":
        return [CPU]
    if requested == "cuda":
        if CUDA not in available:
            raise ConfigError(
                "provider cuda asked for but onnxruntime has no CUDAExecutionProvider "
                f"(available: {available}); run `make install-gpu` or use --provider cpu"
            )
        return [CUDA, CPU]
    if requested == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise ConfigError(f"provider must be auto, cpu or cuda, got {requested!r}")


def check_running(requested: str, asked: list[str], running: list[str]) -> str:
    """The provider really running; a silent fall back from CUDA to CPU is an error."""
    if asked[0] == CUDA and (not running or running[0] != CUDA):
        message = f"CUDA provider asked for ({requested}) but the session runs on {running}"
        if requested == "cuda":
            raise ConfigError(message + ": check the CUDA/cuDNN install or use --provider cpu")
        log.warning("event=provider_fallback %s", message)
    return running[0]


@dataclass(frozen=True)
class Batch:
    """One request's model inputs, already numpy with the contract's dtypes."""

    user_idx: np.ndarray  # int64 [1]
    hist_idx: np.ndarray  # int64 [1, L]
    hist_content: np.ndarray  # float32 [1, L, C]
    hist_mask: np.ndarray  # float32 [1, L]
    item_idx: np.ndarray  # int64 [N]
    item_content: np.ndarray  # float32 [N, C]
    item_count: np.ndarray  # float32 [N]


class Model:
    """ONNX session + manifest + vocab index maps (index 0 = unknown)."""

    def __init__(self, run_dir: Path, provider: str = "auto", threads: int = 1) -> None:
        run_dir = Path(run_dir)
        manifest_path = run_dir / MANIFEST_FILE
        if not manifest_path.is_file():
            raise ConfigError(f"no {MANIFEST_FILE} in {run_dir}: run `python -m training.export`")
        self.manifest = json.loads(manifest_path.read_text())
        self.version = str(self.manifest.get("model_version", "unknown"))
        self.content_dim = int(self.manifest["content_dim"])
        self.history_len = int(self.manifest.get("history_len", 50))
        vocab = json.loads((run_dir / self.manifest.get("vocab_file", "vocab.json")).read_text())
        self.user_index = {str(u): i + 1 for i, u in enumerate(vocab["users"])}
        self.item_index = {str(u): i + 1 for i, u in enumerate(vocab["items"])}
        self.item_ids = [str(i) for i in vocab["items"]]
        onnx_path = run_dir / self.manifest.get("onnx_file", "model.onnx")
        self.session, self.provider = _session(onnx_path, provider, threads)
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(INPUTS):
            raise ConfigError(f"{onnx_path} inputs {names} differ from the contract {INPUTS}")
        self.input_names = names
        log.info(
            "event=model_loaded version=%s provider=%s items=%d users=%d",
            self.version, self.provider, len(self.item_index), len(self.user_index),
        )  # fmt: skip

    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """One ORT run for all candidates: (logit [N], prob [N]) as float32."""
        feeds = {name: getattr(batch, name) for name in self.input_names}
        logit, prob = self.session.run(["logit", "prob"], feeds)
        return logit.astype(np.float32, copy=False), prob.astype(np.float32, copy=False)

    def warm_up(self, n: int = 8) -> None:
        """Run once on dummy inputs so the first real request pays no set-up cost."""
        dim = self.content_dim
        batch = Batch(
            np.zeros(1, np.int64), np.zeros((1, 1), np.int64), np.zeros((1, 1, dim), np.float32),
            np.zeros((1, 1), np.float32), np.zeros(n, np.int64), np.zeros((n, dim), np.float32),
            np.zeros(n, np.float32),
        )  # fmt: skip
        _, prob = self.score(batch)
        if not np.isfinite(prob).all():
            raise ConfigError("model gives non-finite scores for a user with no history")


def _session(path: Path, provider: str, threads: int) -> tuple[ort.InferenceSession, str]:
    """Build the session with explicit providers and say which one really runs."""
    if not path.is_file():
        raise ConfigError(f"ONNX file {path} is missing: run `python -m training.export`")
    asked = choose_providers(provider, ort.get_available_providers())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=asked)
    running = check_running(provider, asked, session.get_providers())
    return session, running
