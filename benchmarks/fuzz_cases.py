"""Hypothesis strategies for every field of every RPC, and the oracle that says
which fields of a drawn request are wrong (``benchmarks.fuzz`` sends them to a server).

A ``Case`` is one request and the set of fields the oracle finds wrong: empty means
well-formed (the server must answer OK), otherwise the server must answer
INVALID_ARGUMENT naming one of them. The oracle is written from the rules in
``protos/tailrank/v1/ranking.proto`` and docs/SERVING.md, not from the server's code:

- ids (user, item, candidate): non-empty, at most 256 UTF-8 bytes, no NUL;
  Rank's ``request_id`` may be empty, at most 128 bytes; Feedback's at most 256;
- Rank: 1 to ``max_candidates`` candidates, no duplicates, ``top_k >= 0``,
  ``tail_weight`` (when set) in [0, 1] (NaN is not);
- Feedback: 1 to 1000 events, ``event_type`` click/cart/purchase, ``timestamp_ms`` >= 0
  and at most a day past now (0 = now);
- UpsertItems: 1 to 1000 items, item ids unique, text keys among the items table's text
  columns, values at most 8192 bytes without NUL, numeric keys among its columns and
  finite, and at least one text column not blank (``ItemColumns``, from the features
  step's summary).

Values drawn: ids of the served store, any unicode, SQL-looking and other odd strings,
empty, NUL bytes, ids just under and over the byte limits (multi-byte characters), a
1 MB id, 1,001 candidates or events, duplicates, negative and extreme ints, NaN, ±inf,
-0.0 and float32 neighbours of 0 and 1. Two kinds of request are not messages of the
schema at all: a body whose string field is invalid UTF-8 (``MALFORMED``, sent as raw
bytes; proto3 strings must be UTF-8) and one over gRPC's 4 MB receive limit
(``OVERSIZE``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from serving.api.tailrank.v1 import ranking_pb2

MAX_ID_BYTES, MAX_RANK_REQUEST_ID_BYTES, MAX_EVENTS = 256, 128, 1000
MAX_UPSERT_ITEMS, MAX_TEXT_BYTES = 1000, 8192
EVENT_TYPES = ("click", "cart", "purchase")
DAY_MS, HOUR_MS = 86_400_000, 3_600_000
MALFORMED, OVERSIZE = "<malformed message>", "<over the 4 MB receive limit>"
MAX_RECEIVE_BYTES = 4 * 1024 * 1024  # gRPC's default grpc.max_receive_message_length
INT32, INT64 = 2**31, 2**63

SQL_LIKE = [
    "' OR '1'='1",
    "1; DROP TABLE feedback; --",
    "x'); DELETE FROM impressions; --",
    '" OR ""="',
    "' UNION SELECT sqlite_version() --",
    "%' --",
    "NULL",
    "\\'; --",
]
ODD = [" ", "\t\r\n", "\u202eevil", "a\u0301", "\ufeff", "🙂", "../../etc/passwd", "${jndi:x}",
       "%s%n", "<script>alert(1)</script>", "é" * 128, "😀" * 64]  # fmt: skip


@dataclass(frozen=True)
class Case:
    """One request: ``message`` (a protobuf message, or raw bytes for ``MALFORMED``) and
    the fields the oracle finds wrong (empty: well-formed)."""

    method: str  # "Rank" or "Feedback"
    message: object
    problems: frozenset[str]

    @property
    def well_formed(self) -> bool:
        return not self.problems


def id_wrong(value: str, max_bytes: int = MAX_ID_BYTES, required: bool = True) -> bool:
    """The proto's id rule: non-empty (unless optional), <= max_bytes UTF-8, no NUL."""
    if not value:
        return required
    return len(value.encode()) > max_bytes or "\x00" in value


def rank_problems(request: ranking_pb2.RankRequest, max_candidates: int) -> frozenset[str]:
    problems = {"user_id"} if id_wrong(request.user_id) else set()
    cands = list(request.candidate_ids)
    if not cands or len(cands) > max_candidates or len(set(cands)) < len(cands):
        problems.add("candidate_ids")
    problems |= {f"candidate_ids[{i}]" for i, c in enumerate(cands) if id_wrong(c)}
    if request.top_k < 0:
        problems.add("top_k")
    if request.HasField("tail_weight") and not 0.0 <= request.tail_weight <= 1.0:
        problems.add("tail_weight")
    if id_wrong(request.request_id, MAX_RANK_REQUEST_ID_BYTES, required=False):
        problems.add("request_id")
    return frozenset(problems)


@dataclass(frozen=True)
class ItemColumns:
    """The items table's columns UpsertItems takes (``item_columns`` of the features
    step's features_summary.json): text ones are embedded, numeric ones only logged."""

    text: tuple[str, ...]
    numeric: tuple[str, ...]


def upsert_problems(
    request: ranking_pb2.UpsertItemsRequest, columns: ItemColumns
) -> frozenset[str]:
    items = request.items
    problems = {"items"} if not items or len(items) > MAX_UPSERT_ITEMS else set()
    seen: set[str] = set()
    for i, item in enumerate(items):
        at = f"items[{i}]"
        if id_wrong(item.item_id) or item.item_id in seen:
            problems.add(f"{at}.item_id")
        seen.add(item.item_id)
        for k, v in item.text.items():
            if k not in columns.text or len(v.encode()) > MAX_TEXT_BYTES or "\x00" in v:
                problems.add(f"{at}.text[{k!r}]")
        for k, v in item.numeric.items():
            if k not in columns.text + columns.numeric or not math.isfinite(v):
                problems.add(f"{at}.numeric[{k!r}]")
        # an item is ranked by its text until it has interactions: one text column not blank
        if not any(item.text[c].strip() if c in item.text else c in item.numeric
                   for c in columns.text):  # fmt: skip
            problems.add(f"{at}.text")
    return frozenset(problems)


def feedback_problems(request: ranking_pb2.FeedbackRequest, now_ms: int) -> frozenset[str]:
    events = request.events
    problems = {"events"} if not events or len(events) > MAX_EVENTS else set()
    for i, e in enumerate(events):
        wrong = {
            "user_id": id_wrong(e.user_id),
            "item_id": id_wrong(e.item_id),
            "event_type": e.event_type not in EVENT_TYPES,
            "timestamp_ms": not 0 <= e.timestamp_ms <= now_ms + DAY_MS,
            "request_id": id_wrong(e.request_id, required=False),
        }
        problems |= {f"events[{i}].{name}" for name, bad in wrong.items() if bad}
    return frozenset(problems)


# --- strategies ------------------------------------------------------------------------------
# Each request is drawn either from the fields' valid values only (about half of them, so
# the well-formed path is exercised as much as the refusals) or from any values.
UTF8 = st.characters(codec="utf-8")  # protobuf strings: no lone surrogates
NO_NUL = st.characters(codec="utf-8", exclude_characters="\x00")


def valid_ids(known: list[str], max_bytes: int = MAX_ID_BYTES) -> st.SearchStrategy[str]:
    """Ids the rules accept: the store's own, any unicode, SQL-looking and odd strings."""
    odd = [v for v in SQL_LIKE + ODD if len(v.encode()) <= max_bytes]
    return st.one_of(
        st.sampled_from(known) if known else st.nothing(),
        st.text(NO_NUL, min_size=1, max_size=24),
        st.sampled_from(odd),
    )


def any_ids(known: list[str], max_bytes: int = MAX_ID_BYTES, huge: bool = True):
    """Valid ids and what the rules refuse: empty, NUL, just over the byte limit (ASCII
    and two-byte characters), up to 1 MB (``huge``) or 4x the limit."""
    return st.one_of(
        valid_ids(known, max_bytes),
        st.just(""),
        st.text(UTF8, max_size=6).map(lambda s: s + "\x00" + s),
        st.integers(max_bytes - 2, max_bytes + 2).map(lambda n: "i" * n),
        st.integers(max_bytes // 2 - 1, max_bytes // 2 + 1).map(lambda n: "é" * n),
        st.just(1_000_000 if huge else max_bytes * 4).map(lambda n: "y" * n),  # repr: short
    )


def case(method: str, message, problems: frozenset[str]) -> Case:
    """A Case; a message over gRPC's receive limit is refused before any field is read."""
    return Case(method, message, frozenset({OVERSIZE}) if message.ByteSize() > MAX_RECEIVE_BYTES
                else problems)  # fmt: skip


def tail_weights(good: bool) -> st.SearchStrategy[float | None]:
    """None (unset) or float32 values: in [0, 1] and its edges; with ``good`` False also
    anything, NaN, ±inf and the float32 neighbours just outside."""
    valid = st.one_of(st.none(), st.floats(0, 1, width=32), st.sampled_from([0.0, -0.0, 1.0]))
    above, below = float(np.nextafter(np.float32(1), np.float32(2))), -float(np.float32(1e-45))
    bad = st.sampled_from([above, below, math.nan, math.inf, -math.inf])
    return valid if good else st.one_of(valid, st.floats(width=32), bad)


def ints(bits: int, good: bool) -> st.SearchStrategy[int]:
    """Small ones, the type's range (with ``good``: its non-negative half) and its edges."""
    lo, hi = (0 if good else -(2 ** (bits - 1))), 2 ** (bits - 1) - 1
    return st.one_of(st.integers(0, 12), st.integers(lo, hi), st.sampled_from([lo, 0, 1, hi]))


@st.composite
def rank_cases(
    draw: st.DrawFn, users: list[str], items: list[str], max_candidates: int = 1000
) -> Case:
    good = draw(st.booleans())
    ids = valid_ids if good else any_ids
    cands = draw(
        st.one_of(
            st.lists(ids(items), min_size=1, max_size=min(60, len(items)), unique=True),
            st.lists(st.sampled_from(items), min_size=1, max_size=8, unique=True),
            st.sampled_from([max_candidates] if good else [0, max_candidates + 1]).map(
                lambda n: [f"c{k}" for k in range(n)]
            ),
            st.nothing()
            if good
            else st.lists(ids(items), min_size=1, max_size=6).map(lambda c: c + c[:1]),
        )
    )
    request = ranking_pb2.RankRequest(
        user_id=draw(ids(users)),
        candidate_ids=cands,
        top_k=draw(ints(32, good)),
        explain=draw(st.booleans()),
        request_id=draw(st.just("") | ids([], MAX_RANK_REQUEST_ID_BYTES)),
    )
    tail_weight = draw(tail_weights(good))
    if tail_weight is not None:
        request.tail_weight = tail_weight
    return case("Rank", request, rank_problems(request, max_candidates))


def timestamps(now_ms: int, good: bool) -> st.SearchStrategy[int]:
    """0 (now), the past, the next 23 h; with ``good`` False also more than a day ahead
    and negative. None within an hour of the one-day limit, so a slow run cannot move a
    value across it."""
    valid = st.one_of(
        st.just(0), st.integers(1, now_ms), st.integers(now_ms, now_ms + DAY_MS - HOUR_MS)
    )
    bad = st.integers(now_ms + DAY_MS + HOUR_MS, INT64 - 1) | st.integers(-INT64, -1)
    return valid if good else valid | bad


@st.composite
def feedback_cases(draw: st.DrawFn, users: list[str], items: list[str], now_ms: int) -> Case:
    good = draw(st.booleans())
    ids = valid_ids if good else any_ids
    types = st.sampled_from(EVENT_TYPES)

    def events(huge: bool) -> st.SearchStrategy[ranking_pb2.FeedbackEvent]:
        more = {} if good else {"huge": huge}
        return st.builds(
            ranking_pb2.FeedbackEvent,
            user_id=ids(users, **more),
            item_id=ids(items, **more),
            event_type=types
            if good
            else st.one_of(
                types, st.sampled_from(["CLICK", "click ", "view"]), any_ids([], huge=huge)
            ),  # fmt: skip
            timestamp_ms=timestamps(now_ms, good),
            request_id=st.just("") | ids([], **more),
        )

    counts = [MAX_EVENTS] if good else [MAX_EVENTS, MAX_EVENTS + 1]
    many = st.tuples(events(huge=False), st.sampled_from(counts))
    listed = draw(
        st.one_of(
            st.lists(events(huge=True), min_size=1 if good else 0, max_size=5),
            many.map(lambda p: [p[0]] * p[1]),
        )
    )
    request = ranking_pb2.FeedbackRequest(events=listed)
    return case("Feedback", request, feedback_problems(request, now_ms))


@st.composite
def upsert_cases(draw: st.DrawFn, items: list[str], columns: ItemColumns) -> Case:
    good = draw(st.booleans())
    names = list(columns.text) + list(columns.numeric)
    key = st.sampled_from(names) if good else st.sampled_from(names) | st.text(UTF8, max_size=8)
    text = st.one_of(
        st.text(NO_NUL, min_size=1, max_size=40).filter(str.strip), st.sampled_from(SQL_LIKE + ODD)
    )
    if not good:
        text = text | st.sampled_from(["", "   "]) | st.text(UTF8, max_size=6).map(
            lambda s: s + "\x00") | st.just(MAX_TEXT_BYTES + 1).map(lambda n: "t" * n)  # fmt: skip
    number = st.floats(allow_nan=False, allow_infinity=False) if good else st.floats()
    item = st.builds(
        ranking_pb2.ItemUpsert,
        item_id=(valid_ids if good else any_ids)(items),
        # with good: the first text column always set, so the item has a text
        text=st.dictionaries(st.sampled_from(columns.text) if good else key, text, max_size=3)
        .map(lambda t: {columns.text[0]: "fuzzed item", **t} if good else t),
        numeric=st.dictionaries(st.sampled_from(columns.numeric) if good and columns.numeric
                                else key, number, max_size=2 if columns.numeric or not good else 0),
    )  # fmt: skip
    listed = draw(
        st.lists(item, min_size=1 if good else 0, max_size=4, unique_by=lambda i: i.item_id)
        if good else st.lists(item, max_size=4) | st.just(MAX_UPSERT_ITEMS + 1).map(
            lambda n: [ranking_pb2.ItemUpsert(item_id=f"n{k}", text={columns.text[0]: "x"})
                       for k in range(n)])
    )  # fmt: skip
    request = ranking_pb2.UpsertItemsRequest(items=listed)
    return case("UpsertItems", request, upsert_problems(request, columns))


def raw_string_field(number: int, value: bytes) -> bytes:
    """The wire bytes of one length-delimited field (tag, varint length, value)."""
    out, n = bytearray([number << 3 | 2]), len(value)
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]) + value)


@st.composite
def wire_cases(draw: st.DrawFn, items: list[str]) -> Case:
    """Bodies that are not messages of the schema: invalid UTF-8 in a string field, or
    a message over gRPC's default 4 MB receive limit."""
    if draw(st.booleans()):
        return Case("Rank", ranking_pb2.RankRequest(user_id="u", candidate_ids=["z" * (5 << 20)]),
                    frozenset({OVERSIZE}))  # fmt: skip
    bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"a\x80b", b"\xf8\x88"]))
    method = draw(st.sampled_from(["Rank", "Feedback", "UpsertItems"]))
    if method == "Rank":  # user_id = <bad>, candidate_ids = [a known item]
        body = raw_string_field(1, bad) + raw_string_field(2, draw(st.sampled_from(items)).encode())
    elif method == "Feedback":  # events = [FeedbackEvent(user_id=<bad>, item_id="i", ...)]
        event = raw_string_field(1, bad) + raw_string_field(2, b"i") + raw_string_field(3, b"click")
        body = raw_string_field(1, event)
    else:  # items = [ItemUpsert(item_id=<bad>)]
        body = raw_string_field(1, raw_string_field(1, bad))
    return Case(method, body, frozenset({MALFORMED}))


def all_cases(
    users: list[str],
    items: list[str],
    max_candidates: int = 1000,
    columns: ItemColumns | None = None,
) -> st.SearchStrategy[Case]:
    """Rank and Feedback in about equal shares, UpsertItems when ``columns`` are known
    (the server has the features step's encoder), and now and then a body off the schema.
    Timestamps are drawn around the time of this call (the same draws on a replay)."""
    now_ms = int(time.time() * 1000)
    rank, feedback = rank_cases(users, items, max_candidates), feedback_cases(users, items, now_ms)
    upserts = [upsert_cases(items, columns)] if columns and columns.text else []
    return st.one_of(rank, feedback, rank, feedback, *upserts, wire_cases(items))
