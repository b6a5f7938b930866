"""ONNX export of a tiny trained run: contract, parity, and clear failures (issue 4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from core import contract
from training import export
from training.checkpoint import load_run
from training.export import ExportError, export_run
from training.model import ExportWrapper

pytestmark = pytest.mark.integration


@pytest.fixture()
def run_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run without its exported files."""
    dest = tmp_path / "run"
    shutil.copytree(tiny_model_dir, dest)
    for name in (contract.ONNX_FILE, contract.MANIFEST_FILE, contract.PROBE_FILE):
        (dest / name).unlink()
    return dest


def _feeds(n: int, length: int, content_dim: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    slots = max(length, 1)
    return {
        "user_idx": np.array([1], dtype=np.int64),
        "hist_idx": rng.integers(0, 5, size=(1, slots)).astype(np.int64),
        "hist_content": rng.normal(size=(1, slots, content_dim)).astype(np.float32),
        "hist_mask": np.full((1, slots), float(length > 0), dtype=np.float32),
        "item_idx": rng.integers(0, 5, size=n).astype(np.int64),
        "item_content": rng.normal(size=(n, content_dim)).astype(np.float32),
        "item_count": rng.integers(0, 50, size=n).astype(np.float32),
    }


def test_manifest_follows_the_contract(tiny_model_dir: Path) -> None:
    manifest = json.loads((tiny_model_dir / contract.MANIFEST_FILE).read_text())
    names = [spec["name"] for spec in manifest["inputs"]]
    assert names == list(contract.INPUT_NAMES)
    assert manifest["onnx_file"] == "model.onnx" and manifest["opset"] == export.OPSET
    assert "dynamo=False" in manifest["exporter"]
    assert manifest["parity_max_abs_diff"] <= export.TOLERANCE
    vocab = json.loads((tiny_model_dir / manifest["vocab_file"]).read_text())
    assert len(vocab["users"]) > 0 and len(vocab["items"]) > 0
    assert manifest["head_tail"]["head_share"] == 0.2
    assert manifest["feature_service"] == "ranker"


@pytest.mark.parametrize(("n", "length"), [(1, 0), (7, 1), (513, 50), (1000, 3)])
def test_onnx_matches_pytorch_at_dynamic_sizes(tiny_model_dir: Path, n: int, length: int) -> None:
    manifest = json.loads((tiny_model_dir / contract.MANIFEST_FILE).read_text())
    cpu = ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(tiny_model_dir / contract.ONNX_FILE), providers=cpu)
    feeds = _feeds(n, length, manifest["content_dim"])
    logit, prob = session.run(["logit", "prob"], feeds)
    assert logit.shape == (n,) and prob.shape == (n,)
    assert np.isfinite(logit).all() and ((prob > 0) & (prob < 1)).all()
    model, _, _ = load_run(tiny_model_dir)
    with torch.no_grad():
        want = ExportWrapper(model)(*(torch.from_numpy(feeds[k]) for k in contract.INPUT_NAMES))
    assert np.abs(logit - want[0].numpy()).max() <= export.TOLERANCE


def test_corrupted_checkpoint_fails_clearly_and_writes_nothing(run_copy: Path) -> None:
    (run_copy / "checkpoint.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(ExportError, match="corrupted"):
        export_run(run_copy)
    assert not (run_copy / contract.ONNX_FILE).exists()
    assert not (run_copy / contract.MANIFEST_FILE).exists()


def test_missing_vocabulary_fails_clearly(run_copy: Path) -> None:
    (run_copy / "vocab.json").unlink()
    with pytest.raises(ExportError, match="vocabulary .* is missing"):
        export_run(run_copy)
    assert not (run_copy / contract.ONNX_FILE).exists()


def test_vocabulary_from_another_run_is_refused(run_copy: Path) -> None:
    (run_copy / "vocab.json").write_text(json.dumps({"users": ["a"], "items": ["b"]}))
    with pytest.raises(ExportError, match="different runs"):
        export_run(run_copy)


def test_parity_failure_writes_nothing(run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # any difference, even 0, now fails
    with pytest.raises(ExportError, match="disagree"):
        export_run(run_copy)
    assert not (run_copy / contract.ONNX_FILE).exists()
    assert not (run_copy / contract.MANIFEST_FILE).exists()
    assert not (run_copy / contract.PROBE_FILE).exists()


def test_manifest_vouches_for_every_file_and_the_probe_replays(tiny_model_dir: Path) -> None:
    """The digests match the files (what a hot swap checks) and the saved probe's outputs
    are what ONNX Runtime gives for its feed; a changed byte breaks the match."""
    manifest = contract.Manifest.read(tiny_model_dir)
    assert set(manifest.raw["files"]) == {"model.onnx", "vocab.json", "probe.npz"}
    contract.check_files(tiny_model_dir, manifest)
    feed, logit, prob = contract.read_probe(tiny_model_dir)
    session = ort.InferenceSession(
        str(tiny_model_dir / contract.ONNX_FILE), providers=["CPUExecutionProvider"]
    )
    got_logit, got_prob = session.run(["logit", "prob"], feed)
    assert len(prob) == 16 and np.abs(got_prob - prob).max() <= 1e-6
    assert np.abs(got_logit - logit).max() <= 1e-5


def test_a_changed_file_breaks_the_manifest_digests(run_copy: Path) -> None:
    export_run(run_copy)
    manifest = contract.Manifest.read(run_copy)
    contract.check_files(run_copy, manifest)
    vocab = run_copy / contract.VOCAB_FILE
    vocab.write_text(vocab.read_text().replace('"items"', '"items" '))  # same JSON, new bytes
    with pytest.raises(contract.ContractError, match="vocab.json .* differs from its manifest"):
        contract.check_files(run_copy, manifest)


def test_int8_quantization_reports_its_accuracy_change(run_copy: Path) -> None:
    manifest = export_run(run_copy, quantize="int8")
    assert manifest["onnx_file"] == contract.INT8_FILE
    report = manifest["quantization"]
    assert set(report["delta"]) == {"HR", "NDCG", "TailHR"}
    for label in ("fp32", "int8"):
        assert all(0.0 <= value <= 1.0 for value in report[label].values())
    assert (run_copy / contract.ONNX_FILE).exists()  # the fp32 graph stays beside it
    cpu = ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(run_copy / contract.INT8_FILE), providers=cpu)
    logit = session.run(["logit"], _feeds(5, 2, manifest["content_dim"]))[0]
    assert np.isfinite(logit).all()


def test_quantization_report_scores_the_catalogue_in_slices(run_copy: Path) -> None:
    """A user's ONNX scores over the catalogue in slices of 3 items equal one run."""
    from training.checkpoint import run_data
    from training.quantize import _onnx_scores

    export_run(run_copy)
    data = run_data(load_run(run_copy)[1])
    cpu = ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(run_copy / contract.ONNX_FILE), providers=cpu)
    user = data.valid.users[:1]
    whole = _onnx_scores(session, data, user, data.n_catalogue)
    assert whole.shape == (1, data.n_catalogue) and data.n_catalogue > 3
    np.testing.assert_allclose(_onnx_scores(session, data, user, 3), whole, rtol=1e-5, atol=1e-6)


def test_cli_help_exits_cleanly() -> None:
    with pytest.raises(SystemExit) as exc:
        export.main(["--help"])
    assert exc.value.code == 0
