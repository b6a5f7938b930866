"""Save and load a training run: checkpoint, config and vocabulary, with errors that say
what to fix. Import only: ``training.train`` writes a run, ``training.evaluate``,
``training.quantize`` and ``training.export`` read it.

A run directory (docs/ARCHITECTURE.md section 3) holds ``checkpoint.pt`` (weights,
vocabulary sizes, the resolved config, the data and feature folders it was trained on,
validation metrics), ``config.json`` (the same config) and ``vocab.json``. A run saved
before an option existed loads with the value it was trained with (``OLD_RUN_DEFAULTS``);
an option that no longer exists is dropped (``REMOVED_OPTIONS``)::

    model, payload, vocab = load_run(Path("artifacts/movielens-100k"))
    data = run_data(payload)  # the run's split, in the index space it was trained in
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from core import contract
from core.files import write_atomic, write_json_atomic
from training import dataset as ds
from training.config import TrainConfig
from training.model import FusionCTR, build_model

CHECKPOINT_FILE = "checkpoint.pt"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
# runs saved before an option existed were trained without it
OLD_RUN_DEFAULTS = {"recency": False, "seq_layers": 0, "catalogue_softmax": 0.0}
# options old runs may carry that no longer exist (run_evaluation: training no longer
# evaluates, `python -m training.evaluate` is the caller's next step)
REMOVED_OPTIONS = ("run_evaluation",)


class CheckpointError(RuntimeError):
    """A run directory cannot be loaded; the message says what to fix."""


def saved_config(values: dict[str, Any]) -> TrainConfig:
    """The config a run was trained with, from the dict it saved (old runs included)."""
    kept = {name: v for name, v in values.items() if name not in REMOVED_OPTIONS}
    return TrainConfig.from_dict({**OLD_RUN_DEFAULTS, **kept})


def save_config(run_dir: Path, config: TrainConfig) -> Path:
    """config.json of the run, written atomically."""
    return write_json_atomic(Path(run_dir) / CONFIG_FILE, config.to_dict())


def load_config(run_dir: Path) -> TrainConfig:
    """The run's config.json, read like the checkpoint's config (``saved_config``)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{path} not found: is {run_dir} a training run directory?")
    try:
        return saved_config(json.loads(path.read_text()))
    except ValueError as exc:  # bad JSON or an unknown/invalid field
        raise CheckpointError(f"{path} is not a tailrank config ({exc})") from exc


def save_checkpoint(
    run_dir: Path, model: FusionCTR, config: TrainConfig, vocab: dict[str, list[str]], extra: dict
) -> None:
    """checkpoint.pt (weights, sizes, config, ``extra``) and vocab.json, each atomically."""
    payload = {
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "n_users": len(vocab["users"]),
        "n_items": len(vocab["items"]),
        **extra,
    }
    write_atomic(Path(run_dir) / CHECKPOINT_FILE, lambda tmp: torch.save(payload, tmp))
    write_json_atomic(
        Path(run_dir) / contract.VOCAB_FILE, {"users": vocab["users"], "items": vocab["items"]}
    )


def load_run(run_dir: Path) -> tuple[FusionCTR, dict, dict]:
    """Model (eval mode, on CPU), checkpoint payload (its ``config`` resolved by
    ``saved_config``) and vocabulary of a run."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        raise CheckpointError(f"{path} not found: train first with `python -m training.train`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        config = saved_config(payload["config"])
        payload["config"] = config.to_dict()
        state = payload["state_dict"]
    except Exception as exc:  # any unpickling/zip error means the file is unusable
        raise CheckpointError(
            f"checkpoint {path} is corrupted or not a tailrank checkpoint ({exc}); "
            "re-run `python -m training.train` to rebuild it"
        ) from exc
    vocab = load_vocab(run_dir, payload)
    model = build_model(config, payload["n_users"], payload["n_items"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not match its config: {exc}") from exc
    return model.eval(), payload, vocab


def load_vocab(run_dir: Path, payload: dict) -> dict:
    """vocab.json of the run, checked against the checkpoint's embedding sizes."""
    path = Path(run_dir) / contract.VOCAB_FILE
    if not path.exists():
        raise CheckpointError(
            f"vocabulary {path} is missing: the server cannot map ids without it; "
            "re-run `python -m training.train` for this run"
        )
    try:
        vocab = json.loads(path.read_text())
        sizes = (len(vocab["users"]), len(vocab["items"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"vocabulary {path} is unreadable ({exc}): re-run training") from exc
    if sizes != (payload["n_users"], payload["n_items"]):
        raise CheckpointError(
            f"vocabulary {path} has {sizes} users/items but the checkpoint was trained with "
            f"{(payload['n_users'], payload['n_items'])}: they come from different runs"
        )
    return vocab


def run_data(payload: dict) -> ds.TrainingData:
    """The training data of a loaded run: its split, rebuilt from the data and feature
    folders the checkpoint records, with the run's mode, history length and hidden items."""
    config = TrainConfig.from_dict(payload["config"])
    return ds.load_training_data(
        Path(payload["data_dir"]),
        Path(payload["features_dir"]),
        config.mode,
        config.history_len,
        config.cold_items,
        config.seed,
    )
