"""The model contract against the real exported model and the real server's loader:
the traced graph follows ``core.contract``, and the server refuses a run directory that
breaks it (a manifest without a field, a renamed input) instead of guessing.
Fast known-answer tests of the contract itself are in tests/test_contract.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from core import contract
from core.contract import Manifest
from serving.errors import ConfigError
from serving.inference import Model


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "run"))


def test_exported_graph_follows_the_contract(tiny_model_dir: Path) -> None:
    manifest = Manifest.read(tiny_model_dir)
    graph = onnx.load(str(tiny_model_dir / manifest.onnx_file)).graph
    assert [v.name for v in graph.input] == list(contract.INPUT_NAMES)
    assert [v.name for v in graph.output] == list(contract.EXPORT_OUTPUT_NAMES)
    session = ort.InferenceSession(str(tiny_model_dir / manifest.onnx_file))
    feed = contract.random_feed(np.random.default_rng(0), 3, 5, manifest.content_dim, 4, 0)
    logit, prob = session.run(list(contract.OUTPUT_NAMES), feed)
    assert logit.shape == prob.shape == (4,) and np.isfinite(prob).all()
    # attention over a 6-item history, the last 2 slots padding: rows sum to 1 over the
    # real items, 0 on the padding
    feed = contract.random_feed(np.random.default_rng(1), 3, 5, manifest.content_dim, 4, 6)
    feed["hist_mask"][0, 4:] = 0.0
    (weights,) = session.run([contract.ATTENTION], feed)
    assert weights.shape == (4, 6) and np.allclose(weights.sum(1), 1.0, atol=1e-5)
    assert np.all(weights[:, 4:] == 0) and np.all(weights >= 0)


def test_server_refuses_a_manifest_without_history_len(model_copy: Path) -> None:
    path = model_copy / contract.MANIFEST_FILE
    raw = json.loads(path.read_text())
    del raw["history_len"]
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"missing fields \['history_len'\]"):
        Model(model_copy, provider="cpu")


def test_server_refuses_a_graph_that_breaks_the_contract(model_copy: Path) -> None:
    path = model_copy / contract.ONNX_FILE
    graph = onnx.load(str(path))
    graph.graph.input[6].name = "item_counts"  # a renamed input: training/serving skew
    for node in graph.graph.node:
        node.input[:] = ["item_counts" if i == "item_count" else i for i in node.input]
    onnx.save(graph, str(path))
    with pytest.raises(ConfigError, match="'item_count' is missing"):
        Model(model_copy, provider="cpu")
