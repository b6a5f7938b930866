"""The exported model: manifest + vocab + one ONNX Runtime session with explicit providers.

Reads the run directory that ``training.export`` writes, through ``core.contract`` (the
one definition of the inputs, the manifest and the vocabulary). The session's inputs
and outputs are checked against the contract when it loads; every request is one
``run`` for all of its candidates::

    python -c "from serving.inference import Model; print(Model('artifacts/x').provider)"
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from core import contract, providers
from core.contract import ContractError, Manifest
from serving.errors import ConfigError

log = logging.getLogger(__name__)


def choose_providers(requested: str, available: list[str]) -> list[str]:
    """``core.providers.choose_providers``, its refusal as a start-up ConfigError."""
    try:
        return providers.choose_providers(requested, available)
    except providers.ProviderError as exc:
        raise ConfigError(str(exc)) from exc


def check_running(requested: str, asked: list[str], running: list[str]) -> str:
    """``core.providers.check_running``, its refusal as a start-up ConfigError."""
    try:
        return providers.check_running(requested, asked, running)
    except providers.ProviderError as exc:
        raise ConfigError(str(exc)) from exc


class Model:
    """ONNX session + manifest + vocab index maps (index 0 = unknown)."""

    def __init__(self, run_dir: Path, provider: str = "auto", threads: int = 1) -> None:
        run_dir = Path(run_dir)
        self.run_dir = run_dir
        try:
            self.manifest = Manifest.read(run_dir)
            users, items = contract.read_vocab(run_dir, self.manifest)
        except ContractError as exc:
            raise ConfigError(str(exc)) from exc
        self.version = self.manifest.model_version
        self.content_dim = self.manifest.content_dim
        self.history_len = self.manifest.history_len
        self.user_index = contract.vocab_index(users)
        self.item_index = contract.vocab_index(items)
        self.item_ids = items
        onnx_path = run_dir / self.manifest.onnx_file
        self.session, self.provider = _session(onnx_path, provider, threads)
        try:
            contract.check_graph(
                _ort_specs(self.session.get_inputs()),
                _ort_specs(self.session.get_outputs()),
                self.content_dim,
            )
        except ContractError as exc:
            raise ConfigError(f"{onnx_path}: {exc}") from exc
        outputs = {o.name for o in self.session.get_outputs()}
        self.explains = contract.ATTENTION in outputs  # exported since 2026-12-02
        log.info(
            "event=model_loaded version=%s provider=%s items=%d users=%d",
            self.version, self.provider, len(self.item_index), len(self.user_index),
        )  # fmt: skip

    def score(self, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """One ORT run for all candidates of a ``contract.build_feed`` feed:
        (logit [N], prob [N]) as float32."""
        logit, prob = self.session.run(list(contract.OUTPUT_NAMES), feed)
        return logit.astype(np.float32, copy=False), prob.astype(np.float32, copy=False)

    def score_explained(
        self, feed: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``score`` plus each candidate's attention weights over the history [N, L] (None
        for a graph exported without them): the same run, one more output copied out."""
        if not self.explains:
            return (*self.score(feed), None)
        names = [*contract.OUTPUT_NAMES, contract.ATTENTION]
        logit, prob, weights = self.session.run(names, feed)
        f32 = np.float32
        return logit.astype(f32, copy=False), prob.astype(f32, copy=False), weights

    def warm_up(self, n: int = 8) -> None:
        """Run once for a user with no history so the first real request pays no set-up
        cost; a model that gives such a user non-finite scores is refused."""
        dim = self.content_dim
        feed = contract.build_feed(
            0, np.zeros(0, np.int64), np.zeros((0, dim)), np.zeros(n, np.int64),
            np.zeros((n, dim)), np.zeros(n),
        )  # fmt: skip
        _, prob = self.score(feed)
        if not np.isfinite(prob).all():
            raise ConfigError("model gives non-finite scores for a user with no history")


def _ort_specs(args: list) -> dict[str, tuple[str, list]]:
    """ORT NodeArgs -> ``{name: (numpy dtype name, shape)}`` for ``contract.check_graph``."""
    return {a.name: (contract.ORT_TYPES.get(a.type, a.type), list(a.shape)) for a in args}


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
