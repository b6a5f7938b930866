"""The model contract (core.contract): one definition that export, evaluation and serving
all follow. Known-answer tests on tiny arrays, plus the real exported tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from core import contract
from core.contract import ContractError, Manifest
from serving.errors import ConfigError
from serving.inference import Model


def test_feed_for_a_user_with_history() -> None:
    feed = contract.build_feed(
        user_idx=3,
        hist_idx=[5, 0],
        hist_content=np.arange(8).reshape(2, 4),
        item_idx=[1, 2, 0],
        item_content=np.ones((3, 4)),
        item_count=[10, 0, 2],
        hist_mask=[1, 1],
    )
    assert list(feed) == list(contract.INPUT_NAMES)
    for spec in contract.INPUTS:
        assert feed[spec.name].dtype == np.dtype(spec.dtype), spec.name
    assert feed["user_idx"].tolist() == [3]
    assert feed["hist_idx"].tolist() == [[5, 0]]
    assert feed["hist_content"].shape == (1, 2, 4) and feed["hist_content"][0, 1, 3] == 7.0
    assert feed["hist_mask"].tolist() == [[1.0, 1.0]]
    assert feed["item_count"].tolist() == [10.0, 0.0, 2.0]


def test_feed_without_history_is_one_padding_slot_with_mask_zero() -> None:
    feed = contract.build_feed(0, [], np.zeros((0, 4)), [1], np.ones((1, 4)), [3])
    assert feed["hist_idx"].tolist() == [[0]]
    assert feed["hist_mask"].tolist() == [[0.0]]
    assert feed["hist_content"].shape == (1, 1, 4) and not feed["hist_content"].any()


def test_history_mask_defaults_to_all_real() -> None:
    feed = contract.build_feed(1, [4, 5, 6], np.ones((3, 2)), [1], np.ones((1, 2)), [0])
    assert feed["hist_mask"].tolist() == [[1.0, 1.0, 1.0]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hist_content": np.ones((3, 4))}, "hist_content"),  # L=3 against hist_idx L=2
        ({"item_count": [1, 2]}, "item_count"),  # N=2 against N=3
        ({"item_content": np.ones((3, 5))}, "hist_content"),  # C=5 against the history's 4
        ({"item_content": np.ones(3)}, r"\[N, C\]"),
    ],
)
def test_inconsistent_feed_is_refused(change: dict, message: str) -> None:
    args = {
        "user_idx": 1,
        "hist_idx": [1, 2],
        "hist_content": np.ones((2, 4)),
        "item_idx": [1, 2, 3],
        "item_content": np.ones((3, 4)),
        "item_count": [1, 2, 3],
    }
    with pytest.raises(ContractError, match=message):
        contract.build_feed(**(args | change))


def _specs(specs, dim: int) -> dict:
    return {s.name: (s.dtype, contract.resolved_shape(s, dim)) for s in specs}


def test_check_graph_accepts_the_contract_and_names_each_difference() -> None:
    inputs, outputs = _specs(contract.INPUTS, 8), _specs(contract.OUTPUTS, 8)
    contract.check_graph(inputs, outputs, 8)
    contract.check_graph(inputs | {"item_idx": ("int64", [None])}, outputs, 8)  # any symbol
    broken = dict(inputs)
    broken.pop("hist_mask")
    broken["item_count"] = ("int64", ["N"])
    broken["hist_content"] = ("float32", [1, "L", 16])
    broken["extra"] = ("float32", [1])
    with pytest.raises(ContractError) as err:
        contract.check_graph(broken, outputs, 8)
    text = str(err.value)
    assert "'hist_mask' is missing" in text
    assert "'item_count' is int64" in text
    assert "'hist_content' has shape" in text
    assert "unexpected input 'extra'" in text


def _manifest() -> dict:
    return {
        "format_version": contract.FORMAT_VERSION,
        "model_version": "m-1",
        "onnx_file": contract.ONNX_FILE,
        "vocab_file": contract.VOCAB_FILE,
        "content_dim": 8,
        "history_len": 20,
        "feature_refs": contract.FEATURE_REFS,
        **contract.manifest_io(8),
    }


def test_manifest_reads_every_field() -> None:
    manifest = Manifest.from_dict(_manifest())
    assert (manifest.model_version, manifest.content_dim, manifest.history_len) == ("m-1", 8, 20)
    assert manifest.feature_refs == contract.FEATURE_REFS


@pytest.mark.parametrize("field", sorted(contract.MANIFEST_FIELDS))
def test_manifest_missing_a_field_is_an_error_naming_it(field: str) -> None:
    raw = _manifest()
    del raw[field]
    with pytest.raises(ContractError, match=f"missing fields \\['{field}'\\]"):
        Manifest.from_dict(raw)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"history_len": "50"}, "history_len"),
        ({"content_dim": True}, "content_dim"),
        ({"format_version": 2}, "format_version 2"),
        ({"inputs": [{"name": "user_idx"}]}, "lists inputs"),
        ({"history_len": 0}, "must be >= 1"),
    ],
)
def test_manifest_with_a_bad_field_is_refused(change: dict, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        Manifest.from_dict(_manifest() | change)


def test_vocab_index_reserves_row_zero() -> None:
    assert contract.vocab_index(["b", "a", 7]) == {"b": 1, "a": 2, "7": 3}


@pytest.fixture
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "run"))


def test_exported_graph_follows_the_contract(tiny_model_dir: Path) -> None:
    manifest = Manifest.read(tiny_model_dir)
    graph = onnx.load(str(tiny_model_dir / manifest.onnx_file)).graph
    assert [v.name for v in graph.input] == list(contract.INPUT_NAMES)
    assert [v.name for v in graph.output] == list(contract.OUTPUT_NAMES)
    session = ort.InferenceSession(str(tiny_model_dir / manifest.onnx_file))
    feed = contract.random_feed(np.random.default_rng(0), 3, 5, manifest.content_dim, 4, 0)
    logit, prob = session.run(list(contract.OUTPUT_NAMES), feed)
    assert logit.shape == prob.shape == (4,) and np.isfinite(prob).all()


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
