"""UpsertItems: a new product rankable without retraining (DESIGN.md, "Live path").

``parse_upserts`` validates a whole ``UpsertItemsRequest`` before anything is done (ids,
sizes, the batch limit, column names against the items table the features step saw,
finite numbers; ``INVALID_ARGUMENT`` names the item and field). ``ItemUpserter.upsert``
then, for the whole batch or nothing:

1. composes each item's text exactly as ``training.features`` does (``core.itemtext``)
   and embeds it with the features step's own sentence-encoder graph in ONNX Runtime
   (``core.textenc``; the graph and tokenizer paths come from ``features_summary.json``
   beside the item view's source), so a text gives the vector the offline path gives it;
2. records the items' fields in the event log (``item_upserts``), so ``events_cli
   export`` hands the next offline rebuild the same catalogue rows;
3. writes the item rows through Feast's public write path (``write_to_online_store``): a
   new item gets count 0, tail, no popularity rank (0) and no first-seen time; an existing
   one keeps its counts, rank, tail flag and first-seen time and gets the new vector;
4. puts the rows in this process's item table (``FeatureClient.put_items``): the next
   Rank here scores them. Other processes and replicas read a new id from the store on
   its first miss, and see a changed vector at their next table load (docs/EVENTS.md).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core import itemtext, schema
from core.ids import id_problem
from serving import metrics
from serving.api.tailrank.v1 import ranking_pb2
from serving.errors import FailedPrecondition, InvalidArgument
from serving.eventlog import check_batch
from serving.features import FeatureClient

log = logging.getLogger(__name__)

MAX_UPSERT_ITEMS = 1000  # items per call
MAX_TEXT_BYTES = 8192  # per text value, UTF-8 (the encoder reads 256 tokens of it)
ENCODE_BATCH = 16  # measured: 16 beats 64 and 256 on 2 cores (less padding)


@dataclass(frozen=True)
class ItemFields:
    """One validated item of an UpsertItems call."""

    item_id: str
    text: dict[str, str]
    numeric: dict[str, float]

    def as_json(self) -> str:
        return json.dumps({"text": self.text, "numeric": self.numeric}, sort_keys=True)


@dataclass(frozen=True)
class Catalogue:
    """The items table's columns as the features step saw them (features_summary.json)."""

    text: tuple[str, ...]  # embedded, in this order
    numeric: tuple[str, ...]  # other number columns: validated and logged, not embedded

    @classmethod
    def from_summary(cls, summary: dict) -> Catalogue:
        columns = summary.get("item_columns") or {}
        return cls(tuple(columns.get("text", ())), tuple(columns.get("numeric", ())))

    def describe(self) -> str:
        return f"text columns {list(self.text)}, numeric columns {list(self.numeric)}"


def parse_upserts(
    request: ranking_pb2.UpsertItemsRequest,
    catalogue: Catalogue,
    max_items: int = MAX_UPSERT_ITEMS,
) -> list[ItemFields]:
    """Every item of the call checked; ``InvalidArgument`` names the first bad field."""
    items = request.items
    check_batch("items", len(items), max_items, "ItemUpsert")
    seen: set[str] = set()
    out = []
    for i, item in enumerate(items):
        where = f"items[{i}]"
        problem = id_problem(f"{where}.item_id", item.item_id)
        if problem:
            raise InvalidArgument(problem)
        if item.item_id in seen:
            raise InvalidArgument(
                f"{where}.item_id {item.item_id!r} is given twice: send each item once"
            )
        seen.add(item.item_id)
        text = {}
        for name, value in sorted(item.text.items()):
            if name not in catalogue.text:
                raise InvalidArgument(
                    f"{where}.text[{name!r}]: not a text column of the items table "
                    f"({catalogue.describe()})"
                )
            if len(value.encode()) > MAX_TEXT_BYTES or "\x00" in value:
                raise InvalidArgument(
                    f"{where}.text[{name!r}]: more than {MAX_TEXT_BYTES} UTF-8 bytes or a NUL "
                    "character: shorten it"
                )
            text[name] = value
        numeric = {}
        for name, value in sorted(item.numeric.items()):
            if name not in catalogue.numeric and name not in catalogue.text:
                raise InvalidArgument(
                    f"{where}.numeric[{name!r}]: not a numeric column of the items table "
                    f"({catalogue.describe()})"
                )
            if not math.isfinite(value):
                raise InvalidArgument(f"{where}.numeric[{name!r}] is {value}: send a finite number")
            numeric[name] = value
        fields = ItemFields(item.item_id, text, numeric)
        if not compose(fields, catalogue):
            raise InvalidArgument(
                f"{where}.text: no non-empty text ({catalogue.describe()}): an item is "
                "ranked by its text until it has interactions, send at least one"
            )
        out.append(fields)
    return out


def compose(fields: ItemFields, catalogue: Catalogue) -> str:
    """The text the features step would embed for these fields."""
    return itemtext.compose({**fields.numeric, **fields.text}, catalogue.text)


class ItemUpserter:
    """Embeds, logs and writes upserted items; one call at a time per process."""

    def __init__(self, features: FeatureClient, summary: dict, event_log=None) -> None:
        from core.textenc import OnnxTextEncoder

        self.features = features
        self.event_log = event_log
        self.catalogue = Catalogue.from_summary(summary)
        encoder = summary.get("encoder") or {}
        graph, model_dir = encoder.get("graph"), encoder.get("path")
        if not self.catalogue.text or not graph or not model_dir:
            raise FailedPrecondition(
                "UpsertItems needs the features step's features_summary.json (item_columns "
                "and encoder.graph) beside the item view's source: re-run training.features "
                "with --encoder-backend onnx (the default) and materialize"
            )
        if not Path(graph).is_file() or not Path(model_dir).is_dir():
            raise FailedPrecondition(
                f"the sentence encoder of the features step is not here ({graph}, {model_dir}): "
                "run the server where training.features ran, or re-run it here"
            )
        self.encoder = OnnxTextEncoder(Path(graph), Path(model_dir), provider="cpu")
        self.identity = encoder.get("identity", "")
        self._lock = threading.Lock()
        if self.encoder.dim != features.content_dim:
            raise FailedPrecondition(
                f"the encoder gives {self.encoder.dim}-d vectors, the model reads "
                f"{features.content_dim}: the feature repo and the model come from different runs"
            )
        log.info("event=upsert_ready encoder=%s %s", self.identity, self.catalogue.describe())

    def upsert(self, items: Sequence[ItemFields]) -> tuple[int, int]:
        """Embed, log, write and serve ``items``; returns (created, updated). Raises
        ``Unavailable`` when the event log or the online store fails: the store then holds
        none of the batch (the log may hold it: a retry logs it again, which is harmless)."""
        start = time.perf_counter()
        texts = [compose(item, self.catalogue) for item in items]
        vectors = self.encoder.encode(texts, batch_size=ENCODE_BATCH).astype(np.float32)
        ids = [item.item_id for item in items]
        with self._lock:  # read counts, write rows: one batch at a time in this process
            if self.event_log is not None:
                self.event_log.record_upserts([(i.item_id, i.as_json()) for i in items])
            current = self.features.item_stats(ids)
            frame = item_frame(items, vectors, current)
            self.features.write_items(frame)
            self.features.put_items(
                {
                    item: (
                        vectors[k],
                        float(frame[schema.INTERACTION_COUNT].iat[k]),
                        bool(frame[schema.IS_TAIL].iat[k]),
                    )  # fmt: skip
                    for k, item in enumerate(ids)
                }
            )
        created = sum(row is None for row in current)
        metrics.ITEMS_UPSERTED.labels("created").inc(created)
        metrics.ITEMS_UPSERTED.labels("updated").inc(len(items) - created)
        log.info(
            "event=items_upserted items=%d created=%d seconds=%.3f",
            len(items), created, time.perf_counter() - start,
        )  # fmt: skip
        return created, len(items) - created


def item_frame(
    items: Sequence[ItemFields], vectors: np.ndarray, current: Sequence[dict | None]
) -> pd.DataFrame:
    """Whole item-view rows for ``write_to_online_store``, stamped now."""
    now = pd.Timestamp.now(tz="UTC")
    old = [row or {} for row in current]

    def seen(row: dict):
        ts = row.get(schema.FIRST_SEEN)
        return pd.NaT if ts is None else pd.Timestamp(ts, unit="s", tz="UTC")

    return pd.DataFrame(
        {
            schema.ITEM_ID: [item.item_id for item in items],
            schema.EVENT_TIMESTAMP: now,
            schema.CONTENT_VEC: list(vectors),
            schema.HAS_TEXT: 1,
            schema.INTERACTION_COUNT: [row.get(schema.INTERACTION_COUNT, 0) for row in old],
            schema.POPULARITY_RANK: [row.get(schema.POPULARITY_RANK, 0) for row in old],
            schema.IS_TAIL: [row.get(schema.IS_TAIL, 1) for row in old],
            schema.FIRST_SEEN: pd.Series([seen(row) for row in old], dtype="datetime64[ns, UTC]"),
            schema.TITLE: [itemtext.as_text(item.text.get("title")) for item in items],
        }
    )
