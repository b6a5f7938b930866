"""The shared id order, head/tail rule and Gini (core/schema.py), on lists with known answers.

Run: pytest tests/test_schema.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core import schema


@pytest.mark.parametrize(
    ("ids", "codes"),
    [
        (["10", "9", "007", "7", "100"], [3, 2, 0, 1, 4]),  # numbers: 007 < 7 < 9 < 10 < 100
        (["01", "1", "001"], [1, 2, 0]),  # one number: leading zeros first, longest first
        (["1", "0", "00"], [2, 0, 1]),  # zero (no digits left after stripping) comes first
        (["10", "9", "a"], [0, 1, 2]),  # one non-number: plain string order
        (["2", "10", "x"], [1, 0, 2]),
        (["b", "a", "b"], [1, 0, 1]),  # equal ids share a code
        (["9", "10", "9"], [0, 1, 0]),
    ],
)
def test_id_order_codes(ids: list[str], codes: list[int]) -> None:
    got = schema.id_order_codes(pd.Series(ids))
    assert got.tolist() == codes and got.dtype == np.int64
    assert schema.id_order_codes(np.array(ids)).tolist() == codes
    assert schema.id_order_codes(pd.Index(ids)).tolist() == codes


def test_id_order_codes_of_nothing_and_of_integers() -> None:
    assert schema.id_order_codes([]).tolist() == []
    assert schema.id_order_codes(np.array([10, 9, 100])).tolist() == [1, 0, 2]  # as "10"...


def test_head_is_the_top_fifth_by_count() -> None:
    counts = pd.Series([3, 9, 3, 1, 0, 0, 7, 3, 2, 1], index=[f"i{k}" for k in range(10)])
    flags = schema.head_tail_flags(counts)
    assert flags.dtype == np.int64 and flags.index.tolist() == counts.index.tolist()
    assert flags[flags == 0].index.tolist() == ["i1", "i6"]  # 2 of 10: the counts 9 and 7


def test_head_ties_break_by_id_order_and_the_share_rounds_down() -> None:
    tied = pd.Series([5, 5, 1, 1, 1], index=["b", "a", "c", "d", "e"])
    assert schema.head_tail_flags(tied).tolist() == [1, 0, 1, 1, 1]  # 1 head: "a" before "b"
    numeric = pd.Series(1, index=[str(k) for k in range(12, 0, -1)])  # "12" ... "1"
    flags = schema.head_tail_flags(numeric)
    assert sorted(flags[flags == 0].index, key=int) == ["1", "2"]  # floor(0.2 * 12) = 2
    assert schema.head_tail_flags(pd.Series([4, 3, 2, 1], index=list("wxyz"))).tolist() == [
        1, 1, 1, 1
    ]  # floor(0.8) = 0: no head  # fmt: skip


def test_head_tail_keeps_a_non_string_index() -> None:
    counts = pd.Series([1, 8, 2, 3, 4], index=[10, 20, 30, 40, 50])
    flags = schema.head_tail_flags(counts)
    assert flags.index.tolist() == [10, 20, 30, 40, 50]
    assert flags.tolist() == [1, 0, 1, 1, 1]


@pytest.mark.parametrize(
    ("exposure", "value"),
    [([5], 0.0), ([1, 0], 0.5), ([0, 0, 0, 8], 0.75), ([1, 2, 3], 2 / 9), ([], 0.0), ([0, 0], 0.0)],
)
def test_gini_known_values(exposure: list[int], value: float) -> None:
    assert schema.gini(np.array(exposure, dtype=np.int64)) == pytest.approx(value)
    assert type(schema.gini(np.array(exposure))) is float
