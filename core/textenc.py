"""The sentence encoder as an ONNX graph at run time: torch-free.

``OnnxTextEncoder`` tokenises with the model's own fast tokenizer (``tokenizer.json``,
the ``tokenizers`` package, truncated at the model's ``max_seq_length``), groups texts of
similar token length into batches padded only to their own longest text, and runs the
graph written by ``training.text_onnx`` (transformer + mean pooling + L2 normalisation,
inputs ``input_ids`` / ``attention_mask``, output ``sentence_embedding``) in ONNX Runtime
with explicit providers: CUDA when present, never a silent CUDA -> CPU fall back.

It imports neither torch nor sentence-transformers nor any training module: it lives in
core so that both ``training.features`` (through ``training.encoder.embed_texts``) and the
server's live path (``UpsertItems``, ``serving.upsert``) run the same graph the same way.
Not a CLI.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from core.providers import check_running, choose_providers

log = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"
GRAPH_FILES = {"fp32": "encoder-fp32.onnx", "int8": "encoder-int8.onnx"}
DEFAULT_MAX_SEQ_LENGTH = 256  # sentence-transformers' value for all-MiniLM-L6-v2


def max_seq_length(model_dir: Path) -> int:
    """The truncation length sentence-transformers uses (``sentence_bert_config.json``)."""
    config = Path(model_dir) / "sentence_bert_config.json"
    if config.exists():
        return int(json.loads(config.read_text()).get("max_seq_length", DEFAULT_MAX_SEQ_LENGTH))
    return DEFAULT_MAX_SEQ_LENGTH


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The model's fast tokenizer, truncating at ``max_seq_length``, padding nothing (the
    file's own settings, fixed padding to 128, are what sentence-transformers overrides)."""
    file = Path(model_dir) / "tokenizer.json"
    if not file.exists():
        raise FileNotFoundError(f"{file} not found: the ONNX encoder needs a fast tokenizer")
    tokenizer = Tokenizer.from_file(str(file))
    tokenizer.enable_truncation(max_seq_length(model_dir))
    tokenizer.no_padding()
    return tokenizer


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length: longest first, stable order."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class OnnxTextEncoder:
    """One ONNX Runtime session over an exported sentence-encoder graph."""

    def __init__(
        self, graph: Path, model_dir: Path, provider: str = "auto", threads: int = 0
    ) -> None:
        self.tokenizer = load_tokenizer(Path(model_dir))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0 = ORT's default, one per core
        asked = choose_providers(provider, ort.get_available_providers())
        self.session = ort.InferenceSession(str(graph), options, providers=asked)
        self.provider = check_running(provider, asked, self.session.get_providers())
        self.dim = int(self.session.get_outputs()[0].shape[1])

    def run_batch(self, ids: list[list[int]]) -> np.ndarray:
        """Vectors for one batch of token id lists, padded to the batch's longest."""
        width = max(len(row) for row in ids)
        input_ids = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        feed = {INPUT_NAMES[0]: input_ids, INPUT_NAMES[1]: mask}
        return self.session.run([OUTPUT_NAME], feed)[0]

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """float32 [len(texts), dim], in the order of ``texts``."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not len(texts):
            return out
        ids = [enc.ids for enc in self.tokenizer.encode_batch(list(texts))]
        for idx in length_batches([len(row) for row in ids], batch_size):
            out[idx] = self.run_batch([ids[i] for i in idx])
        return out
