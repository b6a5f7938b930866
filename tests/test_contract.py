"""The model contract (core/contract.py) without torch or ONNX: shapes, manifest, vocab, feed.

Small hand-written graphs, manifests and feeds; each refusal names what is wrong.

    pytest tests/test_contract.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core import contract
from core.contract import ContractError, Manifest

C = 4  # content width of the tiny model described here


def graph(**changes: tuple[str, list] | None) -> dict[str, tuple[str, list]]:
    """The contract's inputs as a graph reports them (symbols for dynamic axes)."""
    found = {s.name: (s.dtype, contract.resolved_shape(s, C)) for s in contract.INPUTS}
    for name, value in changes.items():
        if value is None:
            del found[name]
        else:
            found[name] = value
    return found


OUTPUTS = {s.name: (s.dtype, list(s.shape)) for s in contract.OUTPUTS}


def manifest_dict(**changes: object) -> dict:
    raw = {
        "format_version": contract.FORMAT_VERSION, "model_version": "m-1",
        "onnx_file": contract.ONNX_FILE, "vocab_file": contract.VOCAB_FILE,
        **contract.manifest_io(C), "content_dim": C, "history_len": 3,
        "feature_refs": contract.FEATURE_REFS,
    }  # fmt: skip
    raw.update(changes)
    return raw


def refusal(call, *args: object) -> str:
    with pytest.raises(ContractError) as err:
        call(*args)
    return str(err.value)


# --- shapes ---------------------------------------------------------------------------------
def test_names_shapes_and_dynamic_axes() -> None:
    assert contract.INPUT_NAMES == (
        "user_idx", "hist_idx", "hist_content", "hist_mask", "item_idx", "item_content",
        "item_count",
    )  # fmt: skip
    assert contract.OUTPUT_NAMES == ("logit", "prob")
    assert contract.DYNAMIC_AXES["hist_content"] == {1: "L"}
    assert contract.DYNAMIC_AXES["item_content"] == {0: "N"}
    assert "user_idx" not in contract.DYNAMIC_AXES  # one user per run: fixed


def test_manifest_io_fills_in_the_content_width() -> None:
    io = contract.manifest_io(384)
    assert io["inputs"][2] == {"name": "hist_content", "dtype": "float32", "shape": [1, "L", 384]}
    assert io["inputs"][5] == {"name": "item_content", "dtype": "float32", "shape": ["N", 384]}
    assert io["outputs"] == [
        {"name": "logit", "dtype": "float32", "shape": ["N"]},
        {"name": "prob", "dtype": "float32", "shape": ["N"]},
        {"name": "attention", "dtype": "float32", "shape": ["N", "L"]},
    ]
    assert [e["name"] for e in io["inputs"]] == list(contract.INPUT_NAMES)


def test_a_graph_that_follows_the_contract_passes() -> None:
    contract.check_graph(graph(), OUTPUTS, C)
    # the explanation output is optional (older exports), and checked when present
    contract.check_graph(graph(), {**OUTPUTS, "attention": ("float32", ["N", "L"])}, C)
    bad_attention = {**OUTPUTS, "attention": ("float32", ["N"])}
    assert "output 'attention' has shape ['N'], want ['N', 'L']" in refusal(
        contract.check_graph, graph(), bad_attention, C
    )
    # dynamic axes may carry any symbol, or none
    renamed = graph(item_content=("float32", ["batch", C]), hist_idx=("int64", [1, None]))
    contract.check_graph(renamed, OUTPUTS, C)


def test_every_difference_from_the_contract_is_listed() -> None:
    bad = graph(
        extra=("float32", ["N"]), item_count=None, user_idx=("int32", [1]), hist_idx=None,
        item_content=("float32", ["N", C + 1]), hist_mask=("float32", [1]),
    )  # fmt: skip
    outputs = {"logit": ("float32", ["N"]), "prob": ("float64", ["N"])}
    assert refusal(contract.check_graph, bad, outputs, C) == (
        "the graph breaks the model contract: unexpected input 'extra'; "
        "input 'user_idx' is int32, the contract says int64; "
        "input 'hist_idx' is missing; "
        "input 'hist_mask' has shape [1], want [1, 'L']; "
        "input 'item_content' has shape ['N', 5], want ['N', 4]; "
        "input 'item_count' is missing; "
        "output 'prob' is float64, the contract says float32"
    )
    only_logit_missing = {"prob": ("int64", ["N"])}
    assert refusal(contract.check_graph, graph(), only_logit_missing, C) == (
        "the graph breaks the model contract: output 'logit' is missing; "
        "output 'prob' is int64, the contract says float32"
    )


# --- manifest ---------------------------------------------------------------------------------
def test_a_good_manifest_is_read_with_its_fields() -> None:
    raw = manifest_dict(history_len=1, content_dim=1, **contract.manifest_io(1))  # the minimum
    m = Manifest.from_dict(raw)
    assert (m.model_version, m.onnx_file, m.vocab_file) == ("m-1", "model.onnx", "vocab.json")
    assert (m.content_dim, m.history_len) == (1, 1)
    assert m.feature_refs == contract.FEATURE_REFS and m.raw is raw


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"content_dim": 0}, "content_dim and history_len must be >= 1"),
        ({"history_len": 0}, "content_dim and history_len must be >= 1"),
        ({"format_version": 2}, "has format_version 2, this tailrank reads 1"),
        ({"content_dim": "4"}, "mistyped fields ['content_dim (str, want int)']"),
        ({"history_len": True}, "mistyped fields ['history_len (bool, want int)']"),
        ({"feature_refs": []}, "mistyped fields ['feature_refs (list, want dict)']"),
        ({"inputs": [{"name": "user_idx"}]}, "lists inputs ['user_idx'], the contract has"),
    ],
)
def test_a_bad_manifest_field_is_named(changes: dict, message: str) -> None:
    assert message in refusal(Manifest.from_dict, manifest_dict(**changes), "run/manifest.json")
    assert refusal(Manifest.from_dict, manifest_dict(**changes)).startswith("manifest")


def test_missing_fields_and_non_objects_are_refused() -> None:
    raw = manifest_dict()
    del raw["vocab_file"], raw["onnx_file"]
    assert refusal(Manifest.from_dict, raw, "m.json") == (
        "m.json is missing fields ['onnx_file', 'vocab_file'] or has mistyped fields []: it was"
        " written by another version; re-run `python -m training.export`"
    )
    assert refusal(Manifest.from_dict, [1, 2], "m.json") == (
        "m.json is not a JSON object: re-run `python -m training.export`"
    )


def test_manifest_read_from_a_run_dir(tmp_path: Path) -> None:
    assert refusal(Manifest.read, tmp_path) == (
        f"no manifest.json in {tmp_path}: run `python -m training.export`"
    )
    (tmp_path / "manifest.json").write_text("{not json")
    assert refusal(Manifest.read, tmp_path).startswith(
        f"{tmp_path / 'manifest.json'} is unreadable ("
    )
    (tmp_path / "manifest.json").write_text(json.dumps(manifest_dict(model_version="m-7")))
    assert Manifest.read(tmp_path).model_version == "m-7"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest_dict(history_len=0)))
    assert refusal(Manifest.read, tmp_path).startswith(f"{tmp_path / 'manifest.json'}: ")


# --- vocabulary -------------------------------------------------------------------------------
def test_vocab_rows_start_at_one() -> None:
    assert contract.vocab_index(["b", "a", 7]) == {"b": 1, "a": 2, "7": 3}  # 0 = unknown
    assert contract.vocab_index([]) == {}


def test_read_vocab(tmp_path: Path) -> None:
    manifest = Manifest.from_dict(manifest_dict(vocab_file="v.json"))
    (tmp_path / "v.json").write_text(json.dumps({"users": [1, "u2"], "items": ["i1"]}))
    assert contract.read_vocab(tmp_path, manifest) == (["1", "u2"], ["i1"])
    for text in ('{"users": []}', "[]", "{oops"):
        (tmp_path / "v.json").write_text(text)
        assert refusal(contract.read_vocab, tmp_path, manifest).startswith(
            f"vocabulary {tmp_path / 'v.json'} is missing or unreadable ("
        )
    (tmp_path / "v.json").unlink()
    assert "re-run training for this run" in refusal(contract.read_vocab, tmp_path, manifest)


# --- the feed ---------------------------------------------------------------------------------
def feed(length: int = 2, n: int = 3, **kwargs: object) -> dict[str, np.ndarray]:
    args = {
        "user_idx": 5, "hist_idx": np.arange(1, length + 1),
        "hist_content": np.ones((length, C)), "item_idx": [7, 0, 9][:n],
        "item_content": np.full((n, C), 0.5), "item_count": [3, 0, 12][:n],
    }  # fmt: skip
    args.update(kwargs)
    return contract.build_feed(**args)


def test_build_feed_shapes_and_dtypes() -> None:
    f = feed()
    assert list(f) == list(contract.INPUT_NAMES)
    shapes = {name: a.shape for name, a in f.items()}
    assert shapes == {
        "user_idx": (1,), "hist_idx": (1, 2), "hist_content": (1, 2, C), "hist_mask": (1, 2),
        "item_idx": (3,), "item_content": (3, C), "item_count": (3,),
    }  # fmt: skip
    dtypes = {name: str(a.dtype) for name, a in f.items()}
    assert dtypes == {s.name: s.dtype for s in contract.INPUTS}
    assert f["user_idx"].tolist() == [5] and f["hist_idx"].tolist() == [[1, 2]]
    assert f["hist_mask"].tolist() == [[1.0, 1.0]]  # no mask given: every slot is real
    assert f["item_idx"].tolist() == [7, 0, 9] and f["item_count"].tolist() == [3.0, 0.0, 12.0]


def test_build_feed_keeps_a_given_mask_and_pads_an_empty_history() -> None:
    masked = feed(hist_mask=np.array([0, 1]))
    assert masked["hist_mask"].tolist() == [[0.0, 1.0]]
    empty = feed(length=0, hist_content=np.zeros((0, C)))
    assert empty["hist_idx"].tolist() == [[0]] and empty["hist_mask"].tolist() == [[0.0]]
    assert empty["hist_content"].shape == (1, 1, C) and not empty["hist_content"].any()
    one = feed(length=1, n=1)  # the smallest real request: one history item, one candidate
    assert one["hist_mask"].tolist() == [[1.0]] and one["item_idx"].shape == (1,)


def test_build_feed_refuses_inconsistent_parts() -> None:
    with pytest.raises(ContractError) as err:
        feed(item_content=np.zeros(C))
    assert str(err.value) == f"item_content must be [N, C], got shape ({C},)"
    with pytest.raises(ContractError) as err:
        feed(hist_content=np.ones((2, C + 1)))  # history vectors of another width
    assert str(err.value) == ("feed 'hist_content' is float32 (1, 2, 5), want float32 (1, 2, 4)")
    with pytest.raises(ContractError, match="feed 'item_count' is float32 \\(2,\\)"):
        feed(item_count=[1, 2])


def test_build_feed_casts_indices_and_flattens_columns() -> None:
    # pandas and Feast hand over int32 ids, column vectors, numpy scalars
    f = feed(
        user_idx=np.int32(5), hist_idx=np.array([[1, 2]], dtype=np.int32),
        item_idx=np.array([[7], [0], [9]], dtype=np.int32), item_count=np.array([[3], [0], [12]]),
    )  # fmt: skip
    contract.check_feed(f, C)
    assert f["user_idx"].dtype == np.int64 and f["hist_idx"].tolist() == [[1, 2]]
    assert f["item_idx"].tolist() == [7, 0, 9] and f["item_count"].tolist() == [3.0, 0.0, 12.0]


def test_check_feed_names_missing_inputs_and_wrong_dtypes() -> None:
    f = feed()
    contract.check_feed(f, C)
    partial = {k: v for k, v in f.items() if k != "hist_mask"}
    assert refusal(contract.check_feed, partial, C).startswith("feed has inputs ['hist_content'")
    flat = {**f, "hist_idx": f["hist_idx"][0]}  # [L] where [1, L] is due
    assert refusal(contract.check_feed, flat, C) == (
        "feed 'hist_idx' is int64 (2,), want int64 (1, 2)"
    )
    wrong = {**f, "item_idx": f["item_idx"].astype(np.int32)}
    assert refusal(contract.check_feed, wrong, C) == (
        "feed 'item_idx' is int32 (3,), want int64 (3,)"
    )


def test_random_feed_is_valid_and_seeded() -> None:
    a = contract.random_feed(np.random.default_rng(3), 4, 9, C, n=6, length=2)
    b = contract.random_feed(np.random.default_rng(3), 4, 9, C, n=6, length=2)
    contract.check_feed(a, C)
    assert a["item_idx"].shape == (6,) and a["hist_idx"].shape == (1, 2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert 0 <= a["user_idx"][0] <= 4 and a["item_idx"].max() <= 9 and a["item_idx"].min() >= 0
    assert (a["item_count"] >= 0).all() and a["hist_mask"].tolist() == [[1.0, 1.0]]
    cold = contract.random_feed(np.random.default_rng(3), 4, 9, C, n=1, length=0)
    assert cold["hist_mask"].tolist() == [[0.0]] and cold["item_content"].shape == (1, C)


def test_random_feed_covers_every_index_and_unit_scale_content() -> None:
    rng = np.random.default_rng(0)
    # 0 (unknown) through the last row, for users, history and candidates
    users = {int(contract.random_feed(rng, 2, 3, C, 1, 1)["user_idx"][0]) for _ in range(60)}
    big = contract.random_feed(rng, 2, 3, 64, n=2000, length=300)
    assert users == {0, 1, 2}
    assert set(big["item_idx"].tolist()) == {0, 1, 2, 3} == set(big["hist_idx"][0].tolist())
    # content vectors of norm about 1 whatever the width; counts average about 50
    for name in ("item_content", "hist_content"):
        norms = np.linalg.norm(big[name].reshape(-1, 64), axis=1)
        assert 0.9 < norms.mean() < 1.1, name
    assert 45 < big["item_count"].mean() < 55
