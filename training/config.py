"""Typed configuration of a tailrank training run.

`TrainConfig` holds every knob of the fusion model and its training loop with a commented
default. `python -m training.train` turns each field into a `--flag` (underscores become
dashes), and the resolved config is saved as `config.json` beside every checkpoint and
ONNX file (`training.checkpoint`), so a run can always be reproduced and loaded without
guessing::

    python -m training.train --data data/movielens-100k \\
        --features feature_repo/data/movielens-100k \\
        --mode eval --out artifacts/ml --embedding-dim 64 --sampler uniform
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.cli import parse_bool
from core.contract import DEFAULT_HISTORY_LEN


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; defaults are the ones tuned on MovieLens-100K.

    Frozen and validated once, at construction. A value derived later (``content_dim``
    from the content vectors) makes a new config: ``dataclasses.replace(config, ...)``.
    """

    # --- data -------------------------------------------------------------------------
    mode: str = "eval"  # eval: train on train, stop on valid; deploy: train on train+valid
    history_len: int = DEFAULT_HISTORY_LEN  # last N items of a user's history fed to attention
    history_skip: float = 0.0  # chance a training history ends one item early (stale features)
    cold_items: float = 0.0  # share of catalogue items hidden from training (ColdHR runs)
    # --- model ------------------------------------------------------------------------
    embedding_dim: int = 32  # width d of ID embeddings and of the content projection
    content_dim: int = 384  # C, set from the content vectors (384 for all-MiniLM-L6-v2)
    attention_dim: int = 16  # hidden width of the DIN attention scorer
    attention_rank: int = 8  # rank of the candidate x history product in the scorer
    recency: bool = True  # attention keys carry a learned position-from-newest vector
    seq_layers: int = 1  # self-attention blocks of the sequence encoder (0 = no sequence part)
    seq_heads: int = 2  # attention heads per block (embedding_dim must divide by it)
    mlp_dims: tuple[int, ...] = (64, 32)  # fusion MLP widths
    dropout: float = 0.1  # dropout inside the fusion MLP
    id_dropout: float = 0.15  # chance an item ID is replaced by the unknown row in training
    user_dropout: float = 0.05  # chance a user ID is replaced by the unknown row in training
    # --- negatives and loss -----------------------------------------------------------
    negatives: int = 4  # sampled negatives per positive
    sampler: str = "uniform"  # uniform | popularity (q(i) ~ count^pop_alpha)
    pop_alpha: float = 0.75  # popularity sampler exponent
    logq_weight: float = 1.0  # strength of the log-Q correction for the popularity sampler
    loss: str = "bce"  # bce (per candidate) | softmax (sampled softmax over positive + negatives)
    catalogue_softmax: float = 1.0  # weight of the full-catalogue softmax on (u + s).v (0 = off)
    full_softmax_max_items: int = 20_000  # larger vocabularies: sampled catalogue softmax
    catalogue_negatives: int = 2048  # sampled catalogue softmax: uniform items shared by a batch
    bce_weight: float = 0.0  # softmax loss: weight of an added BCE term (keeps `prob` calibrated)
    # --- optimisation -----------------------------------------------------------------
    batch_size: int = 512  # positives per step over all torchrun processes (each: its share)
    lr: float = 3e-3  # Adam learning rate
    lr_schedule: str = "constant"  # constant | cosine (per step from lr down to 0 at `epochs`)
    weight_decay: float = 0.0  # Adam weight decay (every parameter, embeddings included)
    sparse_embeddings: str = "auto"  # on | off | auto (on above 100k ID rows; off under NCCL)
    embedding_l2: float = 1e-6  # L2 on the embedding rows a batch touches
    epochs: int = 16  # upper bound; early stopping may end sooner
    patience: int = 3  # epochs without a better validation NDCG@10 before stopping
    eval_every: int = 1  # validate every this many epochs
    max_steps_per_epoch: int = 0  # 0 = a full pass over the training interactions
    seed: int = 42  # seeds numpy, torch and the sampler
    device: str = "auto"  # auto (CUDA when present, else CPU) | cpu | cuda
    num_threads: int = 0  # torch CPU threads (0 = torch's default; 1 helps on busy machines)
    # --- evaluation -------------------------------------------------------------------
    k: int = 10  # cut-off of every ranking metric
    eval_batch_users: int = 16  # users scored and ranked together: [users, catalogue] arrays
    eval_pairs: int = 1024  # (user, item) pairs per scoring forward pass (CPU cache-sized)
    valid_users: int = 2000  # early-stop on this many seeded users (0 = all; 200 too noisy)
    eval_shortlist: int = 2000  # larger catalogues: full model on the (u + s).v top N (0 = off)

    def __post_init__(self) -> None:
        """Store ``mlp_dims`` as a tuple (config.json and the CLI give lists) and reject a
        bad value with ValueError naming the field and what it must be."""
        object.__setattr__(self, "mlp_dims", tuple(int(width) for width in self.mlp_dims))
        rules = {  # field -> (value is fine, what it must be)
            "mode": (self.mode in ("eval", "deploy"), "'eval' or 'deploy'"),
            "sampler": (self.sampler in ("uniform", "popularity"), "uniform|popularity"),
            "loss": (self.loss in ("bce", "softmax"), "bce|softmax"),
            "lr_schedule": (self.lr_schedule in ("constant", "cosine"), "constant|cosine"),
            "bce_weight": (self.bce_weight >= 0.0, ">= 0"),
            "history_len": (self.history_len >= 1, ">= 1"),
            "cold_items": (0.0 <= self.cold_items < 1.0, "in [0, 1)"),
            "id_dropout": (0.0 <= self.id_dropout < 1.0, "in [0, 1)"),
            "history_skip": (0.0 <= self.history_skip <= 1.0, "in [0, 1]"),
            "seq_layers": (self.seq_layers >= 0, ">= 0"),
            "seq_heads": (self.seq_heads >= 1, ">= 1"),
            "catalogue_softmax": (self.catalogue_softmax >= 0.0, ">= 0"),
            "full_softmax_max_items": (self.full_softmax_max_items >= 0, ">= 0"),
            "catalogue_negatives": (self.catalogue_negatives >= 1, ">= 1"),
            "sparse_embeddings": (self.sparse_embeddings in ("auto", "on", "off"), "auto|on|off"),
            "negatives": (self.negatives >= 1, ">= 1"),
            "embedding_dim": (self.embedding_dim >= 1, ">= 1"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "eval_batch_users": (self.eval_batch_users >= 1, ">= 1"),
            "eval_pairs": (self.eval_pairs >= 1, ">= 1"),
            "valid_users": (self.valid_users >= 0, ">= 0 (0 = all)"),
            "eval_shortlist": (self.eval_shortlist >= 0, ">= 0 (0 = exact ranking)"),
            "device": (self.device in ("auto", "cpu", "cuda"), "auto|cpu|cuda"),
        }
        for name, (ok, rule) in rules.items():
            if not ok:
                value = getattr(self, name)
                raise ValueError(f"invalid training config: {name} must be {rule}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (``mlp_dims`` as a list), as config.json and checkpoints hold them."""
        return {**dataclasses.asdict(self), "mlp_dims": list(self.mlp_dims)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config, refusing unknown keys (a typo must not be silently ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one `--flag` per TrainConfig field, defaulting to None (= keep the default)."""
    group = parser.add_argument_group("config overrides (see training/config.py)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(TrainConfig(), f.name)
        if isinstance(default, bool):
            group.add_argument(flag, type=parse_bool, default=None, help=f"default {default}")
        elif isinstance(default, tuple):
            group.add_argument(flag, type=int, nargs="+", default=None, help=f"default {default}")
        else:
            kind = type(default)
            group.add_argument(flag, type=kind, default=None, help=f"default {default}")


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    """Apply the CLI overrides that were given on top of `base` (or the defaults)."""
    values = (base or TrainConfig()).to_dict()
    for name in values:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    return TrainConfig.from_dict(values)


def load_config_file(path: Path) -> TrainConfig:
    """A TrainConfig from a JSON file of its fields (``best_config.json``); a missing,
    unreadable or unknown key is a clear error."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--config {path}: cannot read it as JSON ({exc})") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: not a JSON object of TrainConfig fields")
    if "mlp_dims" in values:
        values["mlp_dims"] = tuple(values["mlp_dims"])
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--config {path}: {exc}") from None
