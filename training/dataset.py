"""Canonical tables -> the index space the fusion model trains and evaluates in.

Two index spaces (docs/ARCHITECTURE.md section 3):

- catalogue index: position of an item in the sorted list of ALL catalogue items (the rows
  of `item_features.parquet`). Evaluation ranks over this axis, and the baselines'
  `train` matrix is [all users, all catalogue items]. Index `n_catalogue` is a padding row
  (zero content, vocabulary index 0) used to pad histories.
- vocabulary index: the model's embedding row. Items / users with at least one interaction
  in the mode's training interactions get 1..n (sorted by id); everything else maps to 0.

Counts and final user histories come from `training.features.item_statistics` and
`user_histories`, so serving and training never compute a feature two ways. Import only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import Tensor

from core import schema
from training import features
from training.tables import sort_interactions

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Model inputs for B users, each with M candidates (labels / log-Q only in training).

    In training batches `content_table` [R, C] holds the content of the R distinct items of
    the batch and `hist_content` / `item_content` are int64 rows into it, so each item's
    content is projected once per step (`training.train.train_epoch`).
    """

    user_idx: Tensor  # [B] int64
    hist_idx: Tensor  # [B, L] int64
    hist_content: Tensor  # [B, L, C] float32
    hist_mask: Tensor  # [B, L] float32
    item_idx: Tensor  # [B or 1, M] int64
    item_content: Tensor  # [B or 1, M, C] float32
    item_count: Tensor  # [B or 1, M] float32
    labels: Tensor | None = None  # [B, M] float32
    logq: Tensor | None = None  # [B, M] float32, subtracted from logits in the loss
    content_table: Tensor | None = None  # [R, C] float32 (training batches only)
    # the catalogue softmax of training (``training.train``): each positive's vocabulary
    # index, the items shown as new in it, and, when it is sampled, the K sampled items
    targets: Tensor | None = None  # [B] int64 vocabulary index of each positive
    cat_drop: Tensor | None = None  # [n_items + 1] or [K] bool
    cat_items: Tensor | None = None  # [K] int64 vocabulary index (None: every item)
    cat_content: Tensor | None = None  # [K, C] float32
    cat_logq: Tensor | None = None  # [K] float32 log expected draws, subtracted from logits

    def to(self, device: torch.device | str) -> Batch:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Batch(**{k: None if v is None else v.to(device) for k, v in values.items()})


@dataclass
class Holdout:
    """One held-out interaction per user: the targets of validation or test."""

    users: np.ndarray  # [n] catalogue user index
    items: np.ndarray  # [n] catalogue item index
    exclude: sp.csr_matrix  # [n_users, n_catalogue] items never ranked for that user


def sample_holdout(holdout: Holdout, n: int, seed: int) -> Holdout:
    """A seeded sample of ``n`` of the holdout's cases, in their order (all when 0 or
    when there are no more than ``n``)."""
    if not n or n >= len(holdout.users):
        return holdout
    rows = np.sort(np.random.default_rng(seed).choice(len(holdout.users), n, replace=False))
    return Holdout(users=holdout.users[rows], items=holdout.items[rows], exclude=holdout.exclude)


@dataclass
class TrainingData:
    """Everything training and evaluation need, in index space."""

    user_ids: np.ndarray  # [U] str, all users, sorted
    item_ids: np.ndarray  # [I] str, all catalogue items, sorted
    user_vocab: list[str]  # users with training interactions (vocabulary index = pos + 1)
    item_vocab: list[str]  # items with training interactions
    user_to_vocab: np.ndarray  # [U] int64
    item_to_vocab: np.ndarray  # [I + 1] int64 (last = padding -> 0)
    content: np.ndarray  # [I + 1, C] float32 (last = padding, zeros)
    train_counts: np.ndarray  # [I] int64 interaction counts in the training interactions
    is_tail: np.ndarray  # [I] bool, head/tail by train counts (schema.head_tail_flags)
    train_users: np.ndarray  # [E] catalogue user index, sorted by user then time
    train_items: np.ndarray  # [E] catalogue item index
    user_start: np.ndarray  # [E] position of the user's first training event
    histories: np.ndarray  # [U, L] catalogue item index, oldest first, left-padded
    valid: Holdout  # early-stopping targets
    test: Holdout | None  # reporting targets (eval mode only)
    hidden_items: np.ndarray  # [I] bool, items hidden from training (cold-item runs)

    @property
    def n_catalogue(self) -> int:
        return len(self.item_ids)

    @property
    def pad(self) -> int:
        return len(self.item_ids)

    @cached_property
    def vocab_rows(self) -> np.ndarray:
        """[n_items + 1] catalogue row of each vocabulary index (row 0 -> the padding row,
        zero content): content by vocabulary index without copying the content table."""
        rows = np.full(len(self.item_vocab) + 1, self.pad, dtype=np.int64)
        known = self.item_to_vocab[:-1] > 0
        rows[self.item_to_vocab[:-1][known]] = np.flatnonzero(known)
        return rows

    @cached_property
    def padded_counts(self) -> np.ndarray:
        """[I + 1] float32 training counts by catalogue row (the padding row: 0)."""
        return np.r_[self.train_counts, 0].astype(np.float32)

    @cached_property
    def vocab_share(self) -> np.ndarray:
        """[n_items + 1] share of the training events by vocabulary index (p_train)."""
        return self.vocab_counts() / max(len(self.train_items), 1)

    def vocab_counts(self) -> np.ndarray:
        """[n_items + 1] float32 counts by vocabulary index (the model's buffer)."""
        out = np.zeros(len(self.item_vocab) + 1, dtype=np.float32)
        np.add.at(out, self.item_to_vocab[:-1], self.train_counts.astype(np.float32))
        out[0] = 0.0
        return out

    def train_matrix(self) -> sp.csr_matrix:
        """[U, I] binary matrix of training interactions (the baselines' input)."""
        ones = np.ones(len(self.train_users), dtype=np.float32)
        shape = (len(self.user_ids), self.n_catalogue)
        mat = sp.csr_matrix((ones, (self.train_users, self.train_items)), shape=shape)
        mat.data[:] = 1.0
        return mat


def read_tables(data_dir: Path, features_dir: Path) -> dict[str, pd.DataFrame]:
    """Read the canonical split and the item features, with clear errors when missing."""
    needed = {
        "train": Path(data_dir) / schema.TRAIN_FILE,
        "valid": Path(data_dir) / schema.VALID_FILE,
        "test": Path(data_dir) / schema.TEST_FILE,
        "items": Path(features_dir) / schema.ITEM_FEATURES_FILE,
    }
    missing = [str(p) for p in needed.values() if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"missing {missing}: run `python -m training.data --out {data_dir}` and "
            f"`python -m training.features --data {data_dir} --out {features_dir}` first"
        )
    return {name: pd.read_parquet(path) for name, path in needed.items()}


def _content_matrix(items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Sorted catalogue ids and their content vectors, plus a zero padding row."""
    items = items.sort_values(schema.ITEM_ID).drop_duplicates(schema.ITEM_ID)
    ids = items[schema.ITEM_ID].astype(str).to_numpy()
    vectors = np.stack(items[schema.CONTENT_VEC].to_numpy()).astype(np.float32)
    if not np.isfinite(vectors).all():
        raise ValueError("item content vectors hold NaN/inf: rebuild the item features")
    return ids, np.vstack([vectors, np.zeros((1, vectors.shape[1]), np.float32)])


def _index(values: pd.Series, ids: np.ndarray, what: str) -> np.ndarray:
    pos = pd.Index(ids).get_indexer(values.astype(str))
    if (pos < 0).any():
        bad = values[pos < 0].astype(str).unique()[:5].tolist()
        raise ValueError(f"{what} ids {bad} are not in the catalogue: rebuild the features")
    return pos.astype(np.int64)


def _sort_events(df: pd.DataFrame) -> pd.DataFrame:
    return sort_interactions(df, by=(schema.USER_ID, schema.TIMESTAMP, schema.ITEM_ID))


def _holdout(df: pd.DataFrame, seen: pd.DataFrame, users: np.ndarray, items: np.ndarray):
    """Targets of one held-out split; `seen` are the interactions excluded from ranking."""
    u = _index(seen[schema.USER_ID], users, "user")
    i = _index(seen[schema.ITEM_ID], items, "item")
    exclude = sp.csr_matrix(
        (np.ones(len(u), dtype=bool), (u, i)), shape=(len(users), len(items)), dtype=bool
    )
    return Holdout(
        users=_index(df[schema.USER_ID], users, "user"),
        items=_index(df[schema.ITEM_ID], items, "item"),
        exclude=exclude,
    )


def load_training_data(
    data_dir: Path, features_dir: Path, mode: str, history_len: int, cold_items: float, seed: int
) -> TrainingData:
    """Build the mode's index space (see the module docstring and ARCHITECTURE.md 1)."""
    t = read_tables(data_dir, features_dir)
    item_ids, content = _content_matrix(t["items"])
    all_events = pd.concat([t["train"], t["valid"], t["test"]])
    user_ids = np.array(sorted(all_events[schema.USER_ID].astype(str).unique()), dtype=object)
    rng = np.random.default_rng(seed)
    hidden = np.zeros(len(item_ids), dtype=bool)
    if cold_items > 0:
        hidden[rng.choice(len(item_ids), int(round(cold_items * len(item_ids))), False)] = True
    if mode == "eval":
        fit, stop, report = t["train"], t["valid"], t["test"]
    else:
        fit, stop, report = pd.concat([t["train"], t["valid"]]), t["test"], None
    seen = fit  # hidden items a user had in train are still never ranked for them
    fit = _sort_events(fit[~fit[schema.ITEM_ID].astype(str).isin(item_ids[hidden])])
    if fit.empty:
        raise ValueError(f"no training interactions in {data_dir} for mode {mode!r}")
    stats = features.item_statistics(fit, pd.Index(item_ids))
    counts = stats[schema.INTERACTION_COUNT].reindex(item_ids).fillna(0).to_numpy(np.int64)
    is_tail = schema.head_tail_flags(pd.Series(counts, index=item_ids)).to_numpy() == 1
    train_users = _index(fit[schema.USER_ID], user_ids, "user")
    train_items = _index(fit[schema.ITEM_ID], item_ids, "item")
    item_vocab = sorted(item_ids[counts > 0].tolist())
    user_vocab = sorted(pd.unique(fit[schema.USER_ID].astype(str)).tolist())
    item_to_vocab = pd.Index(item_vocab).get_indexer(item_ids) + 1  # -1 -> 0 unknown
    user_to_vocab = pd.Index(user_vocab).get_indexer(user_ids) + 1
    starts = np.r_[0, np.flatnonzero(np.diff(train_users)) + 1]
    user_start = np.repeat(starts, np.diff(np.r_[starts, len(train_users)]))
    report_seen = pd.concat([seen, stop]) if report is not None else None
    data = TrainingData(
        user_ids=user_ids,
        item_ids=item_ids,
        user_vocab=user_vocab,
        item_vocab=item_vocab,
        user_to_vocab=user_to_vocab.astype(np.int64),
        item_to_vocab=np.r_[item_to_vocab, 0].astype(np.int64),
        content=content,
        train_counts=counts,
        is_tail=is_tail,
        train_users=train_users,
        train_items=train_items,
        user_start=user_start.astype(np.int64),
        histories=_history_matrix(fit, user_ids, item_ids, history_len),
        valid=_holdout(stop, seen, user_ids, item_ids),
        test=None if report is None else _holdout(report, report_seen, user_ids, item_ids),
        hidden_items=hidden,
    )
    log.info(
        "mode %s: %d users (%d in vocab), %d items (%d in vocab, %d hidden), %d train events",
        mode, len(user_ids), len(user_vocab), len(item_ids), len(item_vocab),
        int(hidden.sum()), len(train_items),
    )  # fmt: skip
    return data


def _history_matrix(
    fit: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray, history_len: int
) -> np.ndarray:
    """[U, L] last-L history per user from features.user_histories, left-padded."""
    hist = features.user_histories(fit, history_len=history_len)
    out = np.full((len(user_ids), history_len), len(item_ids), dtype=np.int64)
    user_pos = pd.Index(user_ids).get_indexer(hist.index.astype(str))
    item_index = pd.Index(item_ids)
    for row, items in zip(user_pos, hist[schema.HISTORY].to_numpy(), strict=True):
        if row < 0 or items is None or len(items) == 0:
            continue
        pos = item_index.get_indexer(pd.Index(list(items)[-history_len:]).astype(str))
        out[row, history_len - len(pos) :] = pos
    return out


def causal_histories(
    data: TrainingData, events: np.ndarray, history_len: int, skip: np.ndarray | int = 0
) -> np.ndarray:
    """[len(events), L] catalogue items a user saw before each training event (left-padded).

    `skip` ([len(events)] or a scalar) drops that many of the newest items before the
    event, so the history ends `skip` interactions earlier (a stale history).
    """
    offsets = np.arange(-history_len, 0)
    idx = (events - skip)[:, None] + offsets[None, :]
    valid = idx >= data.user_start[events][:, None]
    return np.where(valid, data.train_items[np.clip(idx, 0, None)], data.pad)


def user_side(
    data: TrainingData, users: np.ndarray, histories: np.ndarray, content: bool = True
) -> dict:
    """Model user-side tensors for catalogue users and [n, L] catalogue history items.
    ``content=False`` leaves ``hist_content`` None (training batches fill it with rows)."""
    hist = torch.from_numpy(histories)
    return {
        "user_idx": torch.from_numpy(data.user_to_vocab[users]),
        "hist_idx": torch.from_numpy(data.item_to_vocab[histories]),
        "hist_content": torch.from_numpy(data.content[histories]) if content else None,
        "hist_mask": (hist != data.pad).float(),
    }


def item_side(data: TrainingData, items: np.ndarray, content: bool = True) -> dict:
    """Model candidate tensors for catalogue items of any shape [...]; ``content=False``
    leaves ``item_content`` None (training batches fill it with rows)."""
    return {
        "item_idx": torch.from_numpy(data.item_to_vocab[items]),
        "item_content": torch.from_numpy(data.content[items]) if content else None,
        "item_count": torch.from_numpy(data.padded_counts[items]),
    }
