"""Saving and loading a run (training.checkpoint): round trip, old runs, clear failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.checkpoint import (
    CheckpointError,
    load_config,
    load_run,
    save_checkpoint,
    save_config,
    saved_config,
)
from training.config import TrainConfig
from training.model import build_model

VOCAB = {"users": ["u1", "u2", "u3"], "items": ["a", "b", "c", "d"]}
SMALL = {"content_dim": 6, "embedding_dim": 8, "attention_dim": 4, "attention_rank": 4}


def save_run(run_dir: Path, config: TrainConfig) -> torch.nn.Module:
    """A freshly initialised model of ``config`` saved as a run; returns the model."""
    torch.manual_seed(0)
    model = build_model(config, len(VOCAB["users"]), len(VOCAB["items"]), torch.arange(5.0))
    save_config(run_dir, config)
    extra = {"epoch": 3, "data_dir": "data/x", "features_dir": "features/x"}
    save_checkpoint(run_dir, model, config, VOCAB, extra)
    return model


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    config = TrainConfig(**SMALL, mlp_dims=(16, 8), seed=7)
    model = save_run(tmp_path, config)
    loaded, payload, vocab = load_run(tmp_path)
    assert vocab == VOCAB and payload["epoch"] == 3 and payload["data_dir"] == "data/x"
    assert saved_config(payload["config"]) == config and load_config(tmp_path) == config
    assert not loaded.training
    want = model.state_dict()
    got = loaded.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[name], want[name]) for name in want)
    assert json.loads((tmp_path / "config.json").read_text())["mlp_dims"] == [16, 8]


def test_run_saved_before_options_existed_loads_as_trained(tmp_path: Path) -> None:
    """An old run: no recency / seq_layers / catalogue_softmax (trained without them),
    and run_evaluation, an option that no longer exists."""
    old = TrainConfig(**SMALL, recency=False, seq_layers=0, catalogue_softmax=0.0)
    save_run(tmp_path, old)
    values = old.to_dict()
    for name in ("recency", "seq_layers", "catalogue_softmax"):
        del values[name]
    values["run_evaluation"] = True
    (tmp_path / "config.json").write_text(json.dumps(values))
    path = tmp_path / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    torch.save({**payload, "config": values}, path)

    assert load_config(tmp_path) == old
    model, payload, _ = load_run(tmp_path)
    assert saved_config(payload["config"]) == old and "run_evaluation" not in payload["config"]
    assert model.sequence is None and model.attention.recency is None


def test_new_configs_still_refuse_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown config keys"):
        saved_config({"negativs": 3})
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"run_evaluation": False})  # only old runs may carry it


def test_unloadable_runs_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="train first"):
        load_run(tmp_path)
    with pytest.raises(CheckpointError, match="training run directory"):
        load_config(tmp_path)
    save_run(tmp_path, TrainConfig(**SMALL))
    (tmp_path / "config.json").write_text('{"sampler": "zipf"}')
    with pytest.raises(CheckpointError, match="sampler must be"):
        load_config(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_run(tmp_path)
