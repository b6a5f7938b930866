"""The ONNX Runtime execution-provider rule, one copy for every session tailrank builds
(the ranking model in serving, the sentence encoder in training): ``auto`` = CUDA when
onnxruntime offers it, else CPU; asking for CUDA and running on CPU is never silent.
Plain strings in and out, so this module imports no onnxruntime."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


class ProviderError(ValueError):
    """The provider asked for is not available, or not the one running; says what to do."""


def choose_providers(requested: str, available: list[str]) -> list[str]:
    """Providers to ask ORT for, given ``onnxruntime.get_available_providers()``."""
    if requested == "cpu":
        return [CPU]
    if requested == "cuda":
        if CUDA not in available:
            raise ProviderError(
                "provider cuda asked for but onnxruntime has no CUDAExecutionProvider "
                f"(available: {available}); run `make install-gpu` or use provider cpu"
            )
        return [CUDA, CPU]
    if requested == "auto":
        return [CUDA, CPU] if CUDA in available else [CPU]
    raise ProviderError(f"provider must be auto, cpu or cuda, got {requested!r}")


def check_running(requested: str, asked: list[str], running: list[str]) -> str:
    """The provider really running (``session.get_providers()[0]``): a fall back from CUDA
    to CPU is an error when CUDA was asked for by name, a logged warning with ``auto``."""
    if asked[0] == CUDA and (not running or running[0] != CUDA):
        message = f"CUDA provider asked for ({requested}) but the session runs on {running}"
        if requested == "cuda":
            raise ProviderError(message + ": check the CUDA/cuDNN install or use provider cpu")
        log.warning("event=provider_fallback %s", message)
    return running[0]
