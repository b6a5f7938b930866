"""The one module that talks to Feast: user rows, item rows and the in-process item table.

It checks ids, builds entity keys and feature names, and casts every column to numpy
float32 / int64 at the edge. Reads go through the provider's ``online_read`` (Feast's
public Provider API, one SELECT/GET per call, no response building); the item table
(``serving.itemtable``) holds every item the online store holds, filled at start-up
from the ids of the item view's offline source united with the model's vocabulary,
swapped atomically on refresh (SIGHUP or an interval). A candidate the table does not
hold is read from Feast once and remembered (found or not) for ``MISS_TTL_S`` seconds.
Store faults raise ``Unavailable``. A PostgreSQL or Redis store that failed a read is
marked down: reads then fail at once, and at most once per ``RECONNECT_EVERY_S`` one
caller opens a new FeatureStore (new connections) and tries it; see ``_reconnect``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from core import contract, schema
from core.stores import set_store_env_defaults
from serving.errors import ConfigError, FailedPrecondition, Unavailable
from serving.itemtable import ItemTable, vocab_digest

log = logging.getLogger(__name__)

# An id the table does not hold is read from Feast once, then its answer (the row, or
# "not in the store") is reused this long: a bad id cannot make every request slow, and
# an item written to the store after the last table load is seen within this time.
MISS_TTL_S = 30.0
MISS_CACHE_MAX = 100_000  # ids remembered at most (a flood of random ids stays bounded)
# A PostgreSQL or Redis online store that failed a read is not read through the same
# FeatureStore again: Feast's PostgreSQL pool keeps a connection that failed mid-query
# checked out for good (10 such failures and every read waits 30 s for a connection), and
# a pool whose server is down makes each read wait those 30 s. Instead reads fail at once
# while a new FeatureStore is tried, at most this often (docs/RELIABILITY.md).
RECONNECT_EVERY_S = 1.0
PROBE_ID = "__tailrank_probe__"  # a user id no store holds: a read that proves the store answers


@dataclass(frozen=True)
class ItemRows:
    """Features of a list of items, aligned with ``ids``; ``known`` False = not in Feast."""

    ids: Sequence[str]
    known: np.ndarray  # bool [N]
    content: np.ndarray  # float32 [N, C]
    count: np.ndarray  # float32 [N]
    is_tail: np.ndarray  # bool [N]
    vocab_idx: np.ndarray  # int64 [N], the model's index, 0 = unknown to the model


@dataclass(frozen=True)
class UserRow:
    """What the live path (serving.histories) reads of a user row to rewrite it."""

    history: list[str]  # item ids, oldest first
    times: list[int]  # epoch ms of each history item; [] when the store has none
    attributes: str  # JSON object, kept as is


class FeatureClient:
    """Reads user and item features from a Feast online store, with an item table."""

    def __init__(
        self,
        repo: Path,
        content_dim: int,
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
        set_store_env_defaults()  # a Redis yaml without TAILRANK_REDIS_*: the local Redis
        self.store = self._open_store()
        self.content_dim = content_dim
        self._views = self._load_views()
        self.sqlite_path = self._sqlite_file()
        self.miss_ttl_s = MISS_TTL_S
        self._inode: int | None = None
        self._table = ItemTable.empty(content_dim)
        self._recent: dict[str, tuple[float, tuple | None]] = {}  # id -> (expiry, row)
        self._overlay: dict[str, tuple] = {}  # id -> row, upserted here since the table load
        self._lock = threading.Lock()  # one refresh at a time
        self._reopen_lock = threading.Lock()  # one reconnect at a time
        self._down: _Down | None = None  # set while a PostgreSQL/Redis store is failing
        # False: only check_store (the health probe) reconnects; reads fail at once
        self.reconnect_on_read = True

    def _open_store(self):  # -> feast.FeatureStore
        """A new FeatureStore: its own registry cache and its own online store connection."""
        from feast import FeatureStore  # heavy import, only once the config is known good

        return FeatureStore(repo_path=str(self.repo), fs_yaml_file=self.fs_yaml)

    def _load_views(self) -> dict:  # view name -> feast.FeatureView
        views = {}
        for name in (schema.USER_VIEW, schema.ITEM_VIEW):
            try:
                views[name] = self.store.get_feature_view(name)
            except Exception as exc:  # registry missing or view not applied
                raise ConfigError(
                    f"feature view {name!r} not found in the registry {self.fs_yaml} "
                    f"names ({type(exc).__name__}): apply and materialize the data set first "
                    "(`make materialize`, i.e. `python -m training.feast_repo`)"
                ) from exc
        return views

    def _sqlite_file(self) -> Path | None:
        """The SQLite online store file, or None for other stores (Postgres, Redis...)."""
        cfg = self.store.config.online_store
        if getattr(cfg, "type", "") != "sqlite":
            return None
        path = Path(cfg.path)
        return path if path.is_absolute() else Path(self.store.repo_path) / path

    def _read(self, view: str, key: str, ids: Sequence[str], fields: list[str]) -> list:
        """One ``online_read`` of ``fields`` for ``ids``: per id a ``{field: ValueProto}``
        or None when the store does not hold it. Store failures become Unavailable.

        Feast's public Provider API, what ``get_online_features`` calls underneath, minus
        the request planning and response conversion (5x faster for one user). The only
        read path: requests, the item table and the start-up probe all use it. It skips
        the view's TTL, so the TTL is applied here (tailrank's views have none).
        """
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        if self.sqlite_path is not None:
            self._check_sqlite(self.sqlite_path)
        elif self._down is not None:  # raises Unavailable while the store is still down
            self._reconnect(attempt=self.reconnect_on_read)
        store, table = self.store, self._views[view]
        keys = [EntityKey(join_keys=[key], entity_values=[Value(string_val=i)]) for i in ids]
        try:
            found = store.provider.online_read(store.config, table, keys, fields)
        except Exception as exc:  # sqlite3/psycopg/redis errors have no common base
            error = self._unavailable(exc)
            if self.sqlite_path is None and self._down is None:
                self._down = _Down(time.monotonic(), 0.0, str(error))
                log.error("event=online_store_down error=%r (reconnecting)", exc)
            raise error from exc
        if table.ttl:
            oldest = datetime.now(UTC) - table.ttl
            return [v if ts is not None and ts >= oldest else None for ts, v in found]
        return [values for _, values in found]

    def _unavailable(self, exc: Exception) -> Unavailable:
        """The error a store fault becomes: which online store, and the driver's reason."""
        log.warning("event=feast_error error=%r", exc)
        kind = getattr(self.store.config.online_store, "type", "?")
        reason = str(exc).splitlines()[0][:200] if str(exc) else ""
        return Unavailable(
            f"feature store unavailable: the {kind} online store did not answer "
            f"({type(exc).__name__}: {reason}); retry, and check that it is running"
        )

    def _reconnect(self, attempt: bool = True) -> None:
        """The store is marked down: raise Unavailable at once, except for one caller per
        ``RECONNECT_EVERY_S`` (when ``attempt``), which opens a new FeatureStore (new
        connections), reads the probe id through it and, when that answers, serves from it
        from now on. A reconnect can take as long as a failed read (Redis: ~4 s)."""
        down = self._down
        now = time.monotonic()
        if down is None:
            return
        if not attempt or now < down.next_try or not self._reopen_lock.acquire(blocking=False):
            raise Unavailable(down.message)
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        try:
            if self._down is None:  # another thread reconnected meanwhile
                return
            self._down = _Down(down.since, now + RECONNECT_EVERY_S, down.message)
            try:
                store = self._open_store()
                views = {name: store.get_feature_view(name) for name in self._views}
                probe = Value(string_val=PROBE_ID)
                key = EntityKey(join_keys=[schema.USER_ID], entity_values=[probe])
                fields = list(contract.SERVING_USER_FIELDS)
                store.provider.online_read(store.config, views[schema.USER_VIEW], [key], fields)
            except Exception as exc:  # still down (or the registry with it)
                message = str(self._unavailable(exc))
                self._down = _Down(down.since, now + RECONNECT_EVERY_S, message)
                raise Unavailable(message) from exc
            self.store, self._views, self._down = store, views, None
            log.info("event=online_store_reconnected down_s=%.1f", now - down.since)
        finally:
            self._reopen_lock.release()

    def mark_down(self, reason: str) -> None:
        """Treat a PostgreSQL or Redis store as down (the health probe saw it fail or hang;
        ``reason``: the last probe's error): reads fail at once until a reconnect answers.
        No effect on SQLite."""
        if self.sqlite_path is None and self._down is None:
            cfg = self.store.config.online_store
            kind = getattr(cfg, "type", "?")
            address = getattr(cfg, "connection_string", "").split(",")[0] or (
                f"{getattr(cfg, 'host', '?')}:{getattr(cfg, 'port', '?')}"
            )
            message = (f"feature store unavailable: the {kind} online store at {address} "
                       f"did not answer the health probe ({reason}); retry, and check that "
                       "it is running")  # fmt: skip
            self._down = _Down(time.monotonic(), 0.0, message)
            log.error("event=online_store_down error=%r (reconnecting)", reason)

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
                self._recent = {}
                log.info("event=online_store_replaced path=%s (reconnected)", path)

    # --- users ---------------------------------------------------------------------------
    def user_history(self, user_id: str) -> list[str] | None:
        """The user's history (oldest first), or None when Feast does not know the user."""
        fields = list(contract.SERVING_USER_FIELDS)
        (row,) = self._read(schema.USER_VIEW, schema.USER_ID, [user_id], fields)
        value = None if row is None else row.get(schema.HISTORY)
        if value is None or value.WhichOneof("val") != "string_list_val":
            return None
        return list(value.string_list_val.val)

    def user_rows(self, user_ids: Sequence[str]) -> list[UserRow | None]:
        """The live-history fields of ``user_ids`` (one read), None for a user the store does
        not hold. ``times`` is [] in a store built before ``history_ts`` existed."""
        fields = [schema.HISTORY, schema.HISTORY_TS, schema.USER_ATTRIBUTES]
        out: list[UserRow | None] = []
        for row in self._read(schema.USER_VIEW, schema.USER_ID, user_ids, fields):
            history = None if row is None else row.get(schema.HISTORY)
            if history is None or history.WhichOneof("val") != "string_list_val":
                out.append(None)
                continue
            times = row.get(schema.HISTORY_TS)
            ok = times is not None and times.WhichOneof("val") == "int64_list_val"
            attrs = row.get(schema.USER_ATTRIBUTES)
            has_attrs = attrs is not None and attrs.HasField("string_val")
            out.append(
                UserRow(
                    list(history.string_list_val.val),
                    list(times.int64_list_val.val) if ok else [],
                    attrs.string_val if has_attrs else "{}",
                )
            )
        return out

    def write_users(self, rows: pd.DataFrame) -> None:
        """Write whole user rows (every column of the user view, ``event_timestamp``) through
        Feast's public write path, ``FeatureStore.write_to_online_store``. Store faults raise
        ``Unavailable``; nothing is written then."""
        try:
            self.store.write_to_online_store(schema.USER_VIEW, rows)
        except Exception as exc:  # sqlite3/psycopg/redis errors have no common base
            raise self._unavailable(exc) from exc

    def user_source_summary(self) -> dict:
        """``features_summary.json`` beside the user view's offline source (what
        ``training.features`` wrote: its ``history_len``...), {} when there is none."""
        return self._summary(schema.USER_VIEW)

    def item_source_summary(self) -> dict:
        """``features_summary.json`` beside the item view's offline source (its encoder and
        the items table's columns, for UpsertItems), {} when there is none."""
        return self._summary(schema.ITEM_VIEW)

    def _summary(self, view: str) -> dict:
        path = getattr(self._views[view].batch_source, "path", None)
        if not path or "://" in path:
            return {}
        full = Path(path) if Path(path).is_absolute() else Path(self.store.repo_path) / path
        try:
            return json.loads((full.parent / schema.FEATURES_SUMMARY_FILE).read_text())
        except (OSError, ValueError):
            return {}

    # --- items ---------------------------------------------------------------------------
    def fetch_items(self, ids: Sequence[str], vocab: Mapping[str, int] | None = None) -> ItemRows:
        """Item features straight from Feast (no table); unknown items have known=False."""
        n, dim = len(ids), self.content_dim
        fields = list(contract.SERVING_ITEM_FIELDS)
        found = self._read(schema.ITEM_VIEW, schema.ITEM_ID, ids, fields) if n else []
        known = np.zeros(n, bool)
        content = np.zeros((n, dim), np.float32)
        count = np.zeros(n, np.float32)
        tail = np.zeros(n, bool)
        for i, row in enumerate(found):
            vec = None if row is None else row.get(schema.CONTENT_VEC)
            if vec is None or vec.WhichOneof("val") != "float_list_val":
                continue
            vec = vec.float_list_val.val
            if len(vec) != dim:
                raise FailedPrecondition(
                    f"item {ids[i]}: content_vec has {len(vec)} dims but the model wants "
                    f"{dim}: the feature repo and the model come from different runs"
                )
            known[i] = True
            content[i] = vec
            count[i] = _int(row.get(schema.INTERACTION_COUNT))
            tail[i] = _int(row.get(schema.IS_TAIL))
        get = (vocab or {}).get
        vocab_idx = np.fromiter((get(i, 0) for i in ids), np.int64, n)
        return ItemRows(list(ids), known, content, count, tail, vocab_idx)

    def source_item_ids(self) -> list[str]:
        """Item ids of the item view's offline source (the Parquet `feast materialize`
        read), found through the registry; [] when it is not a local file."""
        source = self._views[schema.ITEM_VIEW].batch_source
        path = getattr(source, "path", None)
        if not path or "://" in path:
            log.warning("event=item_source_not_local source=%r (vocabulary items only)", path)
            return []
        full = Path(path) if Path(path).is_absolute() else Path(self.store.repo_path) / path
        try:
            ids = pd.read_parquet(full, columns=[schema.ITEM_ID])[schema.ITEM_ID]
        except (OSError, ValueError, KeyError) as exc:
            log.warning("event=item_source_unreadable path=%s error=%r", full, exc)
            return []
        return ids.astype(str).drop_duplicates().tolist()

    def build_table(self, vocab: Sequence[str], batch_size: int = 500) -> ItemTable:
        """Every item the online store holds among the offline source's ids and the model
        vocabulary ``vocab`` (position + 1 = index), read from Feast in batches."""
        self.store.refresh_registry()  # see views applied since the last load
        self._views = self._load_views()
        index = contract.vocab_index(vocab)
        wanted = list(dict.fromkeys([*self.source_item_ids(), *vocab]))
        parts = []
        batches = range(0, len(wanted), batch_size)
        for start in tqdm(batches, desc="item table", unit="batch", disable=None):
            rows = self.fetch_items(wanted[start : start + batch_size], index)
            parts.append(rows)
        table = _table_from(parts, self.content_dim, vocab_digest(vocab))
        log.info(
            "event=item_table_built items=%d asked=%d not_in_store=%d in_vocab=%d",
            len(table), len(wanted), len(wanted) - len(table),
            int(np.count_nonzero(table.vocab_idx)),
        )  # fmt: skip
        return table

    def use_table(
        self, table: ItemTable, vocab: Sequence[str] | None = None, fresh: bool = True
    ) -> int:
        """Serve from ``table`` from now on (one reference assignment); returns its size.
        With ``vocab``, refuse a table whose vocabulary index was built for another model.
        ``fresh`` False: the same rows indexed for another model (a hot swap), which may
        predate this process's upserts: keep serving those over it."""
        if table.dim != self.content_dim:
            raise ConfigError(
                f"item table has content dim {table.dim}, the model {self.content_dim}"
            )
        if vocab is not None and table.vocab != vocab_digest(vocab):
            raise ConfigError(
                "item table was built for another model vocabulary: build it again for this model"
            )
        self._table = table  # readers see the old table or the new one, never a mix
        if fresh:  # read from the store after every upsert so far
            self._recent = {}  # the new table may hold what was missing
            self._overlay = {}  # ... and what was upserted (a new id: read on its first miss)
        log.info("event=cache_loaded items=%d", len(table))
        return len(table)

    def load_cache(self, vocab: Sequence[str], batch_size: int = 500) -> int:
        """Build a new item table from Feast, then swap it in; returns items held. A failure
        raises and leaves the old table in place."""
        with self._lock:
            return self.use_table(self.build_table(vocab, batch_size))

    def items(
        self,
        ids: Sequence[str],
        vocab: Mapping[str, int] | None = None,
        use_cache: bool = True,
        table: ItemTable | None = None,
    ) -> tuple[ItemRows, int]:
        """Features for ``ids``: the table, then recent lookups, then Feast; returns (rows,
        the number of distinct ids read from Feast). ``vocab`` (the model's id -> index)
        gives the index of an id the table does not hold (default: 0); ``table`` (default:
        the current one) is the one built for that model (serving.modelswap)."""
        vocab = vocab or {}
        if not use_cache:
            return self.fetch_items(ids, vocab), len(set(ids))
        table = self._table if table is None else table
        rows = table.rows(ids)
        known = rows >= 0
        if len(table) == 0:  # nothing to gather from (fancy indexing needs a row)
            table, rows = _zero_table(self.content_dim), np.zeros(len(ids), np.int64)
        got = ItemRows(ids, known, table.content[rows], table.count[rows],
                       table.is_tail[rows], table.vocab_idx[rows])  # fmt: skip
        overlay = self._overlay
        if overlay:  # items upserted by this process win over the table's older rows
            for i, item in enumerate(ids):
                row = overlay.get(item)
                if row is not None:
                    _put(got, i, row)
                    got.vocab_idx[i] = vocab.get(item, 0)  # not the table row -1 gathered
        sent = 0 if known.all() else self._fill_misses(got, np.flatnonzero(~known), vocab)
        return got, sent

    def put_items(self, rows: Mapping[str, tuple[np.ndarray, float, bool]]) -> None:
        """Serve ``rows`` ({id: (content, count, is_tail)}, just written to the store by
        UpsertItems) from now on, before the table; until the next table load, which reads
        them from the store. One reference assignment: readers see all or none."""
        overlay = dict(self._overlay)
        overlay.update(rows)
        self._overlay = overlay
        recent = self._recent
        for item in rows:  # a remembered "not in the store" must not hide a new item
            recent.pop(item, None)

    def item_stats(self, ids: Sequence[str]) -> list[dict | None]:
        """Popularity columns of ``ids`` as the store holds them (None: not held), which an
        upsert of an existing item keeps."""
        fields = [schema.INTERACTION_COUNT, schema.POPULARITY_RANK, schema.IS_TAIL,
                  schema.FIRST_SEEN]  # fmt: skip
        out: list[dict | None] = []
        for row in self._read(schema.ITEM_VIEW, schema.ITEM_ID, ids, fields):
            if row is None or row.get(schema.INTERACTION_COUNT) is None:
                out.append(None)
                continue
            seen = row.get(schema.FIRST_SEEN)
            has_seen = seen is not None and seen.WhichOneof("val") == "unix_timestamp_val"
            out.append(
                {
                    schema.INTERACTION_COUNT: _int(row.get(schema.INTERACTION_COUNT)),
                    schema.POPULARITY_RANK: _int(row.get(schema.POPULARITY_RANK)),
                    schema.IS_TAIL: _int(row.get(schema.IS_TAIL)),
                    schema.FIRST_SEEN: seen.unix_timestamp_val if has_seen else None,
                }
            )
        return out

    def write_items(self, rows: pd.DataFrame) -> None:
        """Write whole item rows through ``FeatureStore.write_to_online_store``; store
        faults raise ``Unavailable`` (nothing is written then)."""
        try:
            self.store.write_to_online_store(schema.ITEM_VIEW, rows)
        except Exception as exc:  # sqlite3/psycopg/redis errors have no common base
            raise self._unavailable(exc) from exc

    def _fill_misses(self, got: ItemRows, miss: np.ndarray, vocab: Mapping[str, int]) -> int:
        """Fill the rows the table lacks in place: from ids looked up in the last
        ``miss_ttl_s`` seconds, else one Feast read; returns the ids read from Feast."""
        now, recent = time.monotonic(), self._recent
        stale: dict[str, list[int]] = {}
        for i in miss.tolist():
            item = got.ids[i]
            got.vocab_idx[i] = vocab.get(item, 0)
            entry = recent.get(item)
            if entry is not None and entry[0] > now:
                _put(got, i, entry[1])
            else:
                stale.setdefault(item, []).append(i)
        if not stale:
            return 0
        fetched = self.fetch_items(list(stale))
        if len(recent) + len(stale) > MISS_CACHE_MAX:  # drop what expired, else start over
            recent = {k: v for k, v in recent.items() if v[0] > now}
            self._recent = recent = recent if len(recent) < MISS_CACHE_MAX // 2 else {}
        expiry = now + self.miss_ttl_s
        for j, (item, positions) in enumerate(stale.items()):
            row = (
                (fetched.content[j], fetched.count[j], fetched.is_tail[j])
                if fetched.known[j]
                else None
            )
            recent[item] = (expiry, row)
            for i in positions:
                _put(got, i, row)
        return len(stale)

    @property
    def cache_size(self) -> int:
        return len(self._table)

    @property
    def table(self) -> ItemTable:
        """The item table requests are served from now."""
        return self._table

    def check_store(self) -> None:
        """Raise Unavailable when the online store cannot answer (start-up, health probe);
        while it is marked down, this is the call that tries to reconnect, so it answers
        only once the store is usable again (a read that started before the store was
        marked down and succeeded late does not count)."""
        if self._down is None:
            fields = list(contract.SERVING_USER_FIELDS)
            self._read(schema.USER_VIEW, schema.USER_ID, [PROBE_ID], fields)
        if self._down is not None:  # marked down before or during that read
            self._reconnect()


@dataclass(frozen=True)
class _Down:
    """Since when the store is failing, when the next reconnect may start, the last error."""

    since: float  # time.monotonic()
    next_try: float
    message: str


def _int(value) -> int:  # a ValueProto int64 (None or unset = 0)
    return 0 if value is None else int(value.int64_val)


def _put(got: ItemRows, i: int, row: tuple | None) -> None:
    """Row ``i`` of ``got`` from a remembered lookup (None = not in the store)."""
    if row is None:
        got.known[i], got.content[i], got.count[i], got.is_tail[i] = False, 0.0, 0.0, False
    else:
        got.known[i] = True
        got.content[i], got.count[i], got.is_tail[i] = row


def _zero_table(dim: int) -> ItemTable:
    """A one-row table of zeros: what an id missing from an empty table gathers."""
    return ItemTable(["\x00"], np.zeros((1, dim), np.float32), np.zeros(1, np.float32),
                     np.zeros(1, bool), np.zeros(1, np.int64))  # fmt: skip


def _table_from(parts: list[ItemRows], dim: int, vocab: str) -> ItemTable:
    """Stack the known rows of several fetches into one table."""
    if not parts:
        return ItemTable.empty(dim)
    keep = [p.known for p in parts]
    ids = [i for p in parts for i, k in zip(p.ids, p.known, strict=True) if k]
    stack = lambda name: np.concatenate(  # noqa: E731
        [getattr(p, name)[k] for p, k in zip(parts, keep, strict=True)]
    )
    return ItemTable(ids, stack("content"), stack("count"), stack("is_tail"),
                     stack("vocab_idx"), vocab=vocab)  # fmt: skip
