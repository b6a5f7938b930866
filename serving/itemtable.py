"""The item table: every item the online store holds, as arrays one Rank request gathers from.

An ``ItemTable`` is immutable. Row r of each array describes ``ids[r]``:

| array | dtype | shape | meaning |
| --- | --- | --- | --- |
| ``content`` | float32 | [R, C] | content vector |
| ``count`` | float32 | [R] | interaction count |
| ``is_tail`` | bool | [R] | long-tail flag |
| ``vocab_idx`` | int64 | [R] | the model's vocabulary index, 0 = unknown to the model |

``rows(ids)`` turns ids into row numbers (-1 = not in the table) with one dict lookup per
id; everything after that is a numpy gather. ``save(path)`` writes one file atomically
(``core.files``); ``ItemTable.open(path)`` memory-maps its arrays read-only, so several
server processes opening the same file share one copy of the arrays in the page cache
(only the id -> row dict is per process). Replacing the file (save to the same path) never
disturbs a process that has the old one open: its mapping keeps the old inode alive.

File layout: ``MAGIC``, a little-endian uint64 header length, a JSON header (meta and
``{name: [dtype, shape, offset]}`` per array), then the arrays, each 64-byte aligned.
Ids are stored as one UTF-8 blob plus int64 end offsets.

    python -c "from serving.itemtable import ItemTable; print(ItemTable.open('items.tbl'))"
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

import numpy as np

from core.files import write_atomic

# set by the supervisor for its workers: the table file it built for all of them
SHARED_TABLE_ENV = "TAILRANK_SHARED_ITEM_TABLE"
MAGIC = b"TAILRANK-ITEMS-1\n"
ALIGN = 64
ARRAYS = ("content", "count", "is_tail", "vocab_idx", "id_ends", "id_blob")


class ItemTableError(ValueError):
    """A table file is not an item table, or is damaged; the message says what to do."""


def vocab_digest(vocab: Sequence[str]) -> str:
    """A short fingerprint of the model vocabulary the ``vocab_idx`` column was built with."""
    return hashlib.sha1("\n".join(vocab).encode()).hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class ItemTable:
    """An immutable snapshot of item features; the server swaps whole tables."""

    ids: list[str]
    content: np.ndarray  # float32 [R, C]
    count: np.ndarray  # float32 [R]
    is_tail: np.ndarray  # bool [R]
    vocab_idx: np.ndarray  # int64 [R], 0 = unknown to the model
    vocab: str = ""  # vocab_digest of the vocabulary behind vocab_idx
    row: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.content.ndim != 2 or not (
            len(self.content) == len(self.count) == len(self.is_tail) == len(self.vocab_idx) == n
        ):
            raise ItemTableError(
                f"item table arrays disagree: {n} ids, content {self.content.shape}, count "
                f"{self.count.shape}, is_tail {self.is_tail.shape}, vocab_idx "
                f"{self.vocab_idx.shape}"
            )
        object.__setattr__(self, "row", {item: r for r, item in enumerate(self.ids)})

    @classmethod
    def empty(cls, dim: int) -> ItemTable:
        return cls([], np.zeros((0, dim), np.float32), np.zeros(0, np.float32),
                   np.zeros(0, bool), np.zeros(0, np.int64))  # fmt: skip

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"ItemTable(items={len(self)}, dim={self.dim}, vocab={self.vocab!r})"

    @property
    def dim(self) -> int:
        return int(self.content.shape[1])

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """int64 row of each id, -1 where the table does not hold it."""
        n = len(ids)
        return np.fromiter(map(self.row.get, ids, repeat(-1, n)), np.int64, n)

    def for_vocab(self, vocab: Sequence[str]) -> ItemTable:
        """This table with ``vocab_idx`` for the model vocabulary ``vocab`` (position + 1 =
        index): itself when it was built for it, else a new table sharing every feature
        array (memory-mapped ones too) with only ``vocab_idx`` computed again, one dict
        lookup per row. Used when a model with another vocabulary is swapped in."""
        digest = vocab_digest(vocab)
        if digest == self.vocab:
            return self
        index = {item: row for row, item in enumerate(vocab, start=1)}
        vocab_idx = np.fromiter(map(index.get, self.ids, repeat(0)), np.int64, len(self))
        return ItemTable(self.ids, self.content, self.count, self.is_tail, vocab_idx, digest)

    # --- file ---------------------------------------------------------------------------
    def save(self, path: Path) -> Path:
        """Write the table to one file, atomically (readers see the old file or the new)."""
        blob = np.frombuffer("".join(self.ids).encode(), np.uint8)
        lengths = np.fromiter((len(i.encode()) for i in self.ids), np.int64, len(self.ids))
        arrays = {
            "content": np.ascontiguousarray(self.content, np.float32),
            "count": np.ascontiguousarray(self.count, np.float32),
            "is_tail": np.ascontiguousarray(self.is_tail, bool),
            "vocab_idx": np.ascontiguousarray(self.vocab_idx, np.int64),
            "id_ends": np.cumsum(lengths, dtype=np.int64),
            "id_blob": blob,
        }
        layout, offset = {}, 0
        for name, arr in arrays.items():
            layout[name] = [arr.dtype.str, list(arr.shape), offset]
            offset = _aligned(offset + arr.nbytes)
        header = json.dumps({"vocab": self.vocab, "arrays": layout}).encode()
        start = _aligned(len(MAGIC) + 8 + len(header))

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                f.write(MAGIC + struct.pack("<Q", len(header)) + header)
                for name, arr in arrays.items():
                    f.seek(start + layout[name][2])
                    f.write(arr.tobytes())
                f.truncate(start + offset)

        return write_atomic(Path(path), write)

    @classmethod
    def open(cls, path: Path) -> ItemTable:
        """Memory-map a saved table read-only (np.memmap); only the id dict is built here."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    raise ItemTableError(f"{path} is not an item table (written by save())")
                (size,) = struct.unpack("<Q", f.read(8))
                meta = json.loads(f.read(size))
        except (OSError, ValueError, struct.error) as exc:
            raise ItemTableError(f"cannot read item table {path}: {exc}; save it again") from exc
        start = _aligned(len(MAGIC) + 8 + size)
        arrays = {}
        for name in ARRAYS:
            dtype, shape, offset = meta["arrays"][name]
            if int(np.prod(shape)) == 0:  # mmap cannot map zero bytes
                arrays[name] = np.zeros(shape, dtype)
            else:
                arrays[name] = np.memmap(path, dtype, "r", start + offset, tuple(shape))
        ends = np.asarray(arrays.pop("id_ends"))
        text = bytes(arrays.pop("id_blob"))
        starts = np.concatenate([[0], ends[:-1]]) if len(ends) else ends
        ids = [text[s:e].decode() for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
        return cls(ids, vocab=meta["vocab"], **arrays)


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN
