"""TrainConfig: frozen, validated once at construction, JSON round trip (training.config)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from training.config import TrainConfig


def test_config_is_frozen_and_derived_values_make_a_new_config() -> None:
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.content_dim = 8  # type: ignore[misc]
    derived = dataclasses.replace(config, content_dim=8)
    assert derived.content_dim == 8 and config.content_dim == 384
    assert derived == TrainConfig(content_dim=8)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mode", "train"),
        ("sampler", "zipf"),
        ("loss", "hinge"),
        ("lr_schedule", "step"),
        ("bce_weight", -0.1),
        ("history_len", 0),
        ("cold_items", 1.0),
        ("id_dropout", -0.5),
        ("history_skip", 1.5),
        ("seq_layers", -1),
        ("seq_heads", 0),
        ("catalogue_softmax", -1.0),
        ("negatives", 0),
        ("embedding_dim", 0),
        ("batch_size", 0),
        ("device", "tpu"),
    ],
)
def test_invalid_value_fails_at_construction_naming_the_field(field: str, value) -> None:
    message = f"invalid training config: {field} must be .*got {value!r}"
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({field: value})
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TrainConfig(), **{field: value})


def test_mlp_dims_is_a_tuple_and_survives_a_json_round_trip() -> None:
    assert TrainConfig().mlp_dims == (64, 32)
    config = TrainConfig(mlp_dims=[16, 8], seed=3)  # as an old config.json gives it
    assert config.mlp_dims == (16, 8)
    saved = json.loads(json.dumps(config.to_dict()))
    assert saved["mlp_dims"] == [16, 8]
    assert TrainConfig.from_dict(saved) == config
    assert hash(TrainConfig.from_dict(saved)) == hash(config)
