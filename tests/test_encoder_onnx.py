"""The sentence encoder through ONNX Runtime: parity with PyTorch, int8 closeness, empty
texts, length buckets keep the input order, the cache, and a torch-free run-time module.

The graphs are exported once per session into a temp folder (a few seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from core import textenc as text_runtime
from core.providers import ProviderError
from tests.test_layers import top_level_packages_loaded
from training import encoder, text_onnx

TEXTS = [
    "Toy Story (1995)",
    "title: Zebra striped umbrella; category: home",
    "title: GoldenEye; genres: Action|Adventure|Thriller; year: 1995",
    "A waterproof hiking boot in dark green, with a cushioned sole and taped seams. " * 3,
    "x",
]


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Both graphs (fp32, int8) exported once for the session."""
    out = tmp_path_factory.mktemp("text_onnx")
    encoder.load_text_encoder(str(encoder.resolve_model_path(None)), "onnx", "int8", str(out))
    return str(out)


def _encoders(onnx_dir: str) -> tuple:
    path = str(encoder.resolve_model_path(None))
    return (
        encoder.load_text_encoder(path, "torch", "fp32"),
        encoder.load_text_encoder(path, "onnx", "fp32", onnx_dir, "cpu"),
        encoder.load_text_encoder(path, "onnx", "int8", onnx_dir, "cpu"),
    )


def test_fp32_matches_torch_and_int8_stays_close(onnx_dir: str) -> None:
    torch_enc, fp32, int8 = _encoders(onnx_dir)
    ref = torch_enc.encode(TEXTS, 2)
    assert text_onnx.cosines(ref, fp32.encode(TEXTS, 2)).min() >= text_onnx.PARITY_COSINE
    cos8 = text_onnx.cosines(ref, int8.encode(TEXTS, 2))
    assert cos8.mean() >= 0.98 and cos8.min() >= 0.95, cos8
    np.testing.assert_allclose(np.linalg.norm(fp32.encode(TEXTS), axis=1), 1.0, atol=1e-5)


def test_length_buckets_keep_the_input_order(onnx_dir: str) -> None:
    _, fp32, _ = _encoders(onnx_dir)
    alone = np.vstack([fp32.encode([t], 1) for t in TEXTS])  # no padding at all
    bucketed = fp32.encode(TEXTS, batch_size=2)  # sorted by length, padded per batch
    assert text_onnx.cosines(alone, bucketed).min() >= 0.99999
    batches = text_runtime.length_batches([3, 9, 1, 9, 5], batch_size=2)
    assert [b.tolist() for b in batches] == [[1, 3], [4, 0], [2]]


def test_empty_texts_get_zeros_and_the_cache_is_reused(onnx_dir: str, tmp_path: Path) -> None:
    texts = ["", "a red shoe", "  ", "a blue hat", "a red shoe"]
    first = encoder.EmbedStats()
    vecs = encoder.embed_texts(texts, cache_dir=tmp_path, stats=first, onnx_dir=onnx_dir)
    assert not vecs[0].any() and not vecs[2].any() and vecs[1].any()
    np.testing.assert_array_equal(vecs[1], vecs[4])
    assert (first.encoded, first.cached, first.empty) == (2, 0, 2)
    again = encoder.EmbedStats()
    vecs2 = encoder.embed_texts(texts, cache_dir=tmp_path, stats=again, onnx_dir=onnx_dir)
    assert (again.encoded, again.cached) == (0, 2)
    np.testing.assert_array_equal(vecs, vecs2)


def test_int8_vectors_have_their_own_cache(onnx_dir: str, tmp_path: Path) -> None:
    stats = encoder.EmbedStats()
    encoder.embed_texts(["a red shoe"], cache_dir=tmp_path, onnx_dir=onnx_dir)
    encoder.embed_texts(
        ["a red shoe"], cache_dir=tmp_path, stats=stats, onnx_dir=onnx_dir, precision="int8"
    )
    assert stats.encoded == 1  # not served the fp32 vector
    names = sorted(p.name for p in tmp_path.glob("*.parquet"))
    assert len(names) == 2 and sum(n.endswith("-int8.parquet") for n in names) == 1, names


def test_bad_backend_precision_and_provider_are_refused() -> None:
    path = str(encoder.resolve_model_path(None))
    with pytest.raises(ValueError, match="backend"):
        encoder.load_text_encoder(path, "tensorflow")
    with pytest.raises(ValueError, match="fp32 for torch"):
        encoder.load_text_encoder(path, "torch", "int8")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ProviderError, match="CUDAExecutionProvider"):  # the one rule
            text_runtime.OnnxTextEncoder(Path("unused.onnx"), Path(path), provider="cuda")


def test_runtime_module_imports_no_torch() -> None:
    heavy = {"torch", "sentence_transformers", "transformers", "onnx"}
    assert top_level_packages_loaded("import core.textenc", heavy) == []
