"""The one id check: every id a client or a data file gives (users, items, requests).

Ids are strings of at most ``MAX_ID_BYTES`` UTF-8 bytes with no NUL (PostgreSQL text
cannot hold it, so the event log would refuse the row). Callers turn the returned
message into their own error type (``InvalidArgument`` in serving), so this module
stays free of gRPC.
"""

from __future__ import annotations

MAX_ID_BYTES = 256  # user and item ids (ranking.proto)
MAX_REQUEST_ID_BYTES = 128  # request ids echoed back to the client


def id_problem(
    name: str, value: str | None, max_bytes: int = MAX_ID_BYTES, required: bool = True
) -> str | None:
    """What is wrong with ``value`` as the id ``name`` (a message saying how to fix it),
    or None when it is fine. An empty id is fine only when ``required`` is False."""
    if not value:
        return f"{name} is empty: send a non-empty id" if required else None
    size = len(value.encode("utf-8"))
    if size > max_bytes:
        return f"{name} is longer than {max_bytes} bytes ({size} bytes): send a shorter id"
    if "\x00" in value:
        return f"{name} contains a NUL character: remove it"
    return None
