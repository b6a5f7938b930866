"""The one id check (core/ids.py) at its limits, in UTF-8 bytes rather than characters.

Each limit is tested exactly at it (accepted) and one byte past it (refused, with a
message naming the field and the size). Ids mix 1-, 2-, 3- and 4-byte characters so a
check that counted characters would pass some of these and fail others.

    pytest tests/test_ids.py
"""

from __future__ import annotations

import pytest

from core.ids import MAX_ID_BYTES, MAX_REQUEST_ID_BYTES, id_problem


def test_the_limits_are_the_documented_ones() -> None:
    # ranking.proto: ids at most 256 bytes, request ids at most 128 bytes
    assert (MAX_ID_BYTES, MAX_REQUEST_ID_BYTES) == (256, 128)


@pytest.mark.parametrize(
    "value",
    [
        "a" * 256,  # 256 chars, 256 bytes
        "é" * 128,  # 128 chars, 256 bytes
        "日" * 85 + "a",  # 86 chars, 255 + 1 bytes
        "🛒" * 64,  # 64 chars, 256 bytes
    ],
)
def test_an_id_of_exactly_256_bytes_is_accepted(value: str) -> None:
    assert len(value.encode("utf-8")) == 256
    assert id_problem("item_id", value) is None


@pytest.mark.parametrize(
    "value",
    ["a" * 257, "é" * 128 + "a", "日" * 85 + "é", "🛒" * 64 + "a"],
)
def test_an_id_one_byte_past_256_is_refused_with_its_size(value: str) -> None:
    assert len(value.encode("utf-8")) == 257
    assert id_problem("item_id", value) == (
        "item_id is longer than 256 bytes (257 bytes): send a shorter id"
    )


def test_request_id_limit_is_128_bytes() -> None:
    assert id_problem("request_id", "ü" * 64, MAX_REQUEST_ID_BYTES) is None  # 128 bytes
    assert id_problem("request_id", "ü" * 64 + "x", MAX_REQUEST_ID_BYTES) == (
        "request_id is longer than 128 bytes (129 bytes): send a shorter id"
    )
    assert id_problem("user_id", "ü" * 64 + "x") is None  # the default limit is 256


def test_empty_ids_are_refused_only_when_required() -> None:
    assert id_problem("user_id", "") == "user_id is empty: send a non-empty id"
    assert id_problem("user_id", None) == "user_id is empty: send a non-empty id"
    assert id_problem("request_id", "", required=False) is None
    assert id_problem("request_id", None, required=False) is None
    assert id_problem("x", "x") is None  # one byte is enough


@pytest.mark.parametrize("value", ["\x00", "a\x00b", "é" * 127 + "\x00"])
def test_nul_is_refused_anywhere_in_the_id(value: str) -> None:
    assert id_problem("events[2].user_id", value) == (
        "events[2].user_id contains a NUL character: remove it"
    )


def test_an_oversized_id_is_named_for_its_size_before_its_nul() -> None:
    assert "longer than 256 bytes" in id_problem("item_id", "\x00" * 257)
