"""How an item's columns become the one text the sentence encoder embeds.

``training.features`` (offline, a whole items table) and the server's ``UpsertItems``
(live, one item's fields) both call these, so the same columns give the same text and so
the same content vector: "title: ...; genres: ...; year: ..." in ``TEXT_ORDER``, then any
other text column by name, empty values left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

# Numeric columns that still describe an item in words ("year: 1995"); other numbers
# (price, ratings) are features of their own, not text.
TEXT_NUMERIC_COLUMNS = ("year", "release_year")
# Text fields in this order when present; any other text columns follow, by name.
TEXT_ORDER = ("title", "name", "brand", "category", "genres", "year", "description")


def order_columns(columns: Iterable[str]) -> list[str]:
    """Text columns in embedding order: ``TEXT_ORDER`` first, the rest by name."""
    rank = {name: i for i, name in enumerate(TEXT_ORDER)}
    return sorted(columns, key=lambda c: (rank.get(c, len(rank)), c))


def as_text(value: object) -> str:
    """One field value as text: lists joined by commas, whole floats without '.0', missing
    values (None, NaN, pandas NA) as ''."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list | tuple) or type(value).__name__ == "ndarray":
        return ", ".join(t for t in (as_text(v) for v in value) if t)
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return ""
    if isinstance(value, float) or type(value).__module__ == "numpy":
        number = float(value)  # numpy scalars too
        if math.isnan(number):
            return ""
        if number.is_integer() and not isinstance(value, bool):
            return str(int(number))
    return str(value).strip()


def compose(fields: Mapping[str, object], columns: Iterable[str]) -> str:
    """``"col: value; ..."`` over ``columns`` (already in order), empty values left out."""
    parts = ((c, as_text(fields.get(c))) for c in columns)
    return "; ".join(f"{c}: {v}" for c, v in parts if v)
