"""The one module that talks to Feast: user rows, item rows and the in-process item cache.

It checks ids, builds entity rows and feature refs, and casts every column to numpy
float32 / int64 at the edge. The item cache is filled from the online store at start-up
(all vocab items, in batches), swapped atomically on refresh (SIGHUP or an interval), and
a candidate it does not hold is looked up in Feast. Store faults raise ``Unavailable``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core import contract, schema
from serving.errors import ConfigError, FailedPrecondition, Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemRows:
    """Features of a list of items, aligned with ``ids``; ``known`` False = not in Feast."""

    ids: list[str]
    known: np.ndarray  # bool [N]
    content: np.ndarray  # float32 [N, C]
    count: np.ndarray  # float32 [N]
    is_tail: np.ndarray  # bool [N]


@dataclass(frozen=True)
class ItemTable:
    """An immutable snapshot of item features; the cache swaps whole tables."""

    row: dict[str, int]
    content: np.ndarray
    count: np.ndarray
    is_tail: np.ndarray


def _refs(view: str, fields: Iterable[str], extra: Sequence[str]) -> list[str]:
    refs = [f"{view}:{name}" for name in fields]
    return refs + [r for r in extra if r.startswith(view + ":") and r not in refs]


class FeatureClient:
    """Reads user and item features from a Feast online store, with an item cache."""

    def __init__(
        self,
        repo: Path,
        content_dim: int,
        manifest_refs: dict | None = None,
        fs_yaml: Path | None = None,
    ) -> None:
        env_yaml = os.environ.get("FEAST_FS_YAML_FILE_PATH")  # what the feast CLI reads
        self.repo = Path(repo)
        self.fs_yaml = Path(fs_yaml or env_yaml or self.repo / "feature_store.yaml")
        if not self.fs_yaml.is_file():
            raise ConfigError(
                f"{self.fs_yaml} not found: pass --repo <Feast repo dir> and --fs-yaml "
                "<the data set's feature_store.yaml> (make serve prints both)"
            )
        self.store = self._open_store()
        self.content_dim = content_dim
        refs = manifest_refs or {}
        self.user_refs = _refs(schema.USER_VIEW, contract.SERVING_USER_FIELDS, refs.get("user", []))
        try:
            self.store.get_feature_view(schema.ITEM_VIEW)
        except Exception as exc:  # registry missing or view not applied
            raise ConfigError(
                f"feature view {schema.ITEM_VIEW!r} not found in the registry {self.fs_yaml} "
                f"names ({type(exc).__name__}): apply and materialize the data set first "
                "(`make materialize`, i.e. `python -m training.feast_repo`)"
            ) from exc
        self.item_refs = _refs(schema.ITEM_VIEW, contract.SERVING_ITEM_FIELDS, refs.get("item", []))
        self.sqlite_path = self._sqlite_file()
        self._inode: int | None = None
        self._table = _empty_table(content_dim)
        self._lock = threading.Lock()  # one refresh at a time
        self._reopen_lock = threading.Lock()  # one reconnect at a time

    def _open_store(self):  # -> feast.FeatureStore
        """A new FeatureStore: its own registry cache and its own online store connection."""
        from feast import FeatureStore  # heavy import, only once the config is known good

        return FeatureStore(repo_path=str(self.repo), fs_yaml_file=self.fs_yaml)

    def _sqlite_file(self) -> Path | None:
        """The SQLite online store file, or None for other stores (Postgres, Redis...)."""
        cfg = self.store.config.online_store
        if getattr(cfg, "type", "") != "sqlite":
            return None
        path = Path(cfg.path)
        return path if path.is_absolute() else Path(self.store.repo_path) / path

    def _online(self, refs: list[str], key: str, ids: Sequence[str]) -> dict[str, list]:
        """One get_online_features call; any store failure becomes Unavailable."""
        if self.sqlite_path is not None:
            self._check_sqlite(self.sqlite_path)
        try:
            return self.store.get_online_features(refs, {key: list(ids)}).to_dict()
        except Exception as exc:  # sqlite3/psycopg/redis errors have no common base
            log.warning("event=feast_error error=%r", exc)
            raise Unavailable(f"feature store unavailable ({type(exc).__name__}); retry") from exc

    def _check_sqlite(self, path: Path) -> None:
        """Fail fast on a missing file; reconnect when the file was replaced (new inode).

        A SQLite connection keeps reading the file it opened, even once another file has
        been renamed over it (a fresh `feast materialize` elsewhere, then `mv`). Feast has
        no public call to drop its connection, so a new FeatureStore (new provider, new
        connection) replaces the old one; requests in flight finish on the old one.
        """
        try:
            inode = path.stat().st_ino
        except OSError:
            # Feast's SQLite store would silently create an empty file: never query it.
            raise Unavailable(
                f"online store file {path} is missing: run `feast materialize` in the "
                "feature repo (or restore the file); retry afterwards"
            ) from None
        if self._inode in (None, inode):
            self._inode = inode
            return
        with self._reopen_lock:
            if self._inode != inode:  # another thread may have reconnected meanwhile
                self.store = self._open_store()
                self._inode = inode
                log.info("event=online_store_replaced path=%s (reconnected)", path)

    def user_history(self, user_id: str) -> list[str] | None:
        """The user's history (oldest first), or None when Feast does not know the user."""
        rows = self._online(self.user_refs, schema.USER_ID, [user_id])
        history = rows[schema.HISTORY][0]
        return None if history is None else [str(i) for i in history]

    def fetch_items(self, ids: Sequence[str]) -> ItemRows:
        """Item features straight from Feast (no cache); unknown items have known=False."""
        n, dim = len(ids), self.content_dim
        rows = self._online(self.item_refs, schema.ITEM_ID, ids) if n else {}
        vecs = rows.get(schema.CONTENT_VEC, [None] * n)
        known = np.array([v is not None for v in vecs], dtype=bool)
        content = np.zeros((n, dim), dtype=np.float32)
        for i, vec in enumerate(vecs):
            if vec is not None:
                if len(vec) != dim:
                    raise FailedPrecondition(
                        f"item {ids[i]}: content_vec has {len(vec)} dims but the model wants "
                        f"{dim}: the feature repo and the model come from different runs"
                    )
                content[i] = vec
        count = np.array([c or 0 for c in rows.get(schema.INTERACTION_COUNT, [0] * n)])
        tail = np.array([t or 0 for t in rows.get(schema.IS_TAIL, [0] * n)])
        return ItemRows(list(ids), known, content, count.astype(np.float32), tail.astype(bool))

    def load_cache(self, item_ids: Sequence[str], batch_size: int = 500) -> int:
        """Fill a new table from Feast in batches, then swap it in; returns items held."""
        with self._lock:
            self.store.refresh_registry()  # see views applied since the last load
            parts = []
            batches = range(0, len(item_ids), batch_size)
            for start in tqdm(batches, desc="item cache", unit="batch", disable=None):
                rows = self.fetch_items(item_ids[start : start + batch_size])
                parts.append(rows)
            table = _table_from(parts, self.content_dim)
            self._table = table  # one reference assignment: readers see old or new
        missing = len(item_ids) - len(table.row)
        log.info("event=cache_loaded items=%d not_in_store=%d", len(table.row), missing)
        return len(table.row)

    def items(self, ids: Sequence[str], use_cache: bool = True) -> tuple[ItemRows, int]:
        """Features for ``ids`` from the cache, Feast for misses; returns (rows, cache hits)."""
        if not use_cache:
            return self.fetch_items(ids), 0
        table = self._table
        rows = [table.row.get(i, -1) for i in ids]
        hit = np.array(rows) >= 0
        idx = np.where(hit, rows, 0)
        content = table.content[idx] if len(table.row) else _zeros(len(ids), self.content_dim)
        count = table.count[idx] if len(table.row) else np.zeros(len(ids), np.float32)
        tail = table.is_tail[idx] if len(table.row) else np.zeros(len(ids), bool)
        known = hit.copy()
        n_hits = int(hit.sum())
        if n_hits < len(ids):
            miss = np.flatnonzero(~hit)
            fetched = self.fetch_items([ids[i] for i in miss])
            known[miss], content[miss] = fetched.known, fetched.content
            count[miss], tail[miss] = fetched.count, fetched.is_tail
        return ItemRows(list(ids), known, content, count, tail), n_hits

    @property
    def cache_size(self) -> int:
        return len(self._table.row)

    def check_store(self) -> None:
        """Raise Unavailable when the online store cannot answer (used at start-up)."""
        self._online(self.user_refs, schema.USER_ID, ["__tailrank_probe__"])


def _zeros(n: int, dim: int) -> np.ndarray:
    return np.zeros((n, dim), dtype=np.float32)


def _empty_table(dim: int) -> ItemTable:
    return ItemTable({}, _zeros(0, dim), np.zeros(0, np.float32), np.zeros(0, bool))


def _table_from(parts: list[ItemRows], dim: int) -> ItemTable:
    """Stack the known rows of several fetches into one table."""
    if not parts:
        return _empty_table(dim)
    ids = [i for p in parts for i, k in zip(p.ids, p.known, strict=True) if k]
    keep = [p.known for p in parts]
    return ItemTable(
        row={item: r for r, item in enumerate(ids)},
        content=np.concatenate([p.content[k] for p, k in zip(parts, keep, strict=True)]),
        count=np.concatenate([p.count[k] for p, k in zip(parts, keep, strict=True)]),
        is_tail=np.concatenate([p.is_tail[k] for p, k in zip(parts, keep, strict=True)]),
    )
