"""Feedback into the user's history in the online store, so the next Rank sees it.

DESIGN.md, "Live path": a Feedback event goes to the exposure log AND appends the item to
the user's history. ``LiveHistories.apply`` takes the events a Feedback call stored in the
event log, reads the users' rows (one ``online_read``), inserts each event into its user's
history where the offline path (``training.features.user_histories``) would put it, and
writes the changed rows back through Feast's public write path (one
``write_to_online_store``). The next Rank reads the new row: there is no cache to expire.

The order rules are the offline path's, so the next ``training.features`` +
``feast materialize`` over the exported events writes the same rows:

- a history is the last ``limit`` interactions by (time, item id), oldest first; each item
  keeps its time (``history_ts``, epoch ms), so an event is placed exactly, late ones too;
- an event older than everything in a full history is not kept (the offline last-N would
  drop it as well);
- an event equal in (time, item) to one already held is not added again (the offline path
  drops exact duplicate rows; it keeps two events of different types at the same
  millisecond, which the live row cannot tell apart: the one documented difference);
- a user the store does not hold gets a row: the history, and attributes ``{}`` (the offline
  path writes the user table's columns, null when unknown).

Interaction counts (the model's count input, the head/tail flag) are not touched here:
they are refreshed by the offline path on its schedule (docs/EVENTS.md, "Live histories").
One process applies one Feedback call at a time (a lock around read-modify-write). Two
processes or replicas writing the same user at the same instant can lose one of the two
updates; the events themselves are in the event log, and the next offline rebuild restores
the history.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import pandas as pd

from core import schema
from serving import metrics
from serving.eventlog import FeedbackRow
from serving.features import FeatureClient, UserRow

log = logging.getLogger(__name__)

APPLIED, DUPLICATE, TOO_OLD = "applied", "duplicate", "too_old"


def merge_history(
    history: Sequence[str], times: Sequence[int], events: Iterable[tuple[int, str]], limit: int
) -> tuple[list[str], list[int], Counter]:
    """``history``/``times`` with ``events`` ((epoch ms, item id)) inserted in (time, item)
    order, cut to the last ``limit``; returns the new lists and a count per outcome
    (applied, duplicate, too_old).

    ``times`` shorter than ``history`` (a store written before ``history_ts``): the held
    items are taken as older than every event, which is appended after them.
    """
    if len(times) != len(history):
        times = [-1] * len(history)
    pairs = list(zip(times, history, strict=True))
    outcome: Counter = Counter()
    for event in sorted(events):
        at = bisect.bisect_right(pairs, event)
        if at and pairs[at - 1] == event:
            outcome[DUPLICATE] += 1
            continue
        if len(pairs) >= limit and at == 0:
            outcome[TOO_OLD] += 1
            continue
        pairs.insert(at, event)
        del pairs[: max(0, len(pairs) - limit)]
        outcome[APPLIED] += 1
    return [item for _, item in pairs], [ts for ts, _ in pairs], outcome


def epoch_ms(when: datetime) -> int:
    """Milliseconds since the epoch, floored (the offline path's unit for history_ts)."""
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


class LiveHistories:
    """Applies stored Feedback events to the users' histories in the online store."""

    def __init__(self, features: FeatureClient, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"history limit must be >= 1, got {limit}")
        self.features = features
        self.limit = limit
        self._lock = threading.Lock()  # one read-modify-write at a time in this process
        self._warned_no_times = False

    def apply(self, events: Sequence[FeedbackRow]) -> Counter:
        """Insert ``events`` into their users' histories; one read and at most one write.
        Raises ``Unavailable`` when the online store fails (nothing is written then)."""
        by_user: dict[str, list[tuple[int, str]]] = {}
        for event in events:
            by_user.setdefault(event.user_id, []).append(
                (epoch_ms(event.occurred_at), event.item_id)
            )
        users = list(by_user)
        outcome: Counter = Counter()
        with self._lock:
            current = self.features.user_rows(users)
            changed = []
            for user, row in zip(users, current, strict=True):
                row = row or UserRow([], [], "{}")
                if row.history and not row.times and not self._warned_no_times:
                    self._warned_no_times = True
                    log.warning(
                        "event=history_without_times user_view=%s: rows predate history_ts; "
                        "live events go after the held items. Re-run training.features and "
                        "feast apply + materialize for exact order", schema.USER_VIEW,
                    )  # fmt: skip
                history, times, counts = merge_history(
                    row.history, row.times, by_user[user], self.limit
                )
                outcome.update(counts)
                if counts[APPLIED]:
                    changed.append((user, history, times, row.attributes))
            if changed:
                self.features.write_users(user_frame(changed))
        for result, n in outcome.items():
            metrics.HISTORY_UPDATES.labels(result).inc(n)
        return outcome


def user_frame(rows: Sequence[tuple[str, list[str], list[int], str]]) -> pd.DataFrame:
    """Whole user rows as ``write_to_online_store`` takes them, stamped now (the write's
    time: stores that keep the newest row, such as Redis, never skip it)."""
    now = pd.Timestamp.now(tz="UTC")
    return pd.DataFrame(
        {
            schema.USER_ID: [user for user, *_ in rows],
            schema.EVENT_TIMESTAMP: now,
            schema.HISTORY: [history for _, history, _, _ in rows],
            schema.HISTORY_LEN: [len(history) for _, history, _, _ in rows],
            schema.HISTORY_TS: [times for _, _, times, _ in rows],
            schema.USER_ATTRIBUTES: [attrs for *_, attrs in rows],
        }
    )
