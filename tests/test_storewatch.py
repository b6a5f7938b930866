"""serving.storewatch: when health follows the online store (known answers, no server).

The probe is a plain function that answers, raises or hangs as the test says; the real
probe against real stores is drilled in tests/test_fault_drills.py.

    pytest tests/test_storewatch.py
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from serving.config import ServerConfig
from serving.errors import ConfigError, Unavailable
from serving.storewatch import DOWN_AFTER, StoreWatch


class Store:
    """What the probe sees: ``up`` answers, else it raises; ``hang`` blocks until released."""

    def __init__(self) -> None:
        self.up = True
        self.release = threading.Event()
        self.release.set()

    def probe(self) -> None:
        self.release.wait(5)
        if not self.up:
            raise Unavailable("the store did not answer")


def watch(store: Store, changes: list[bool]) -> StoreWatch:
    return StoreWatch(store.probe, lambda up, _: changes.append(up), interval_s=0.05,
                      stop=threading.Event())  # fmt: skip


def test_down_after_three_failures_in_a_row_up_after_one_answer() -> None:
    store, changes = Store(), []
    w = watch(store, changes)
    store.up = False
    assert [w.tick() for _ in range(DOWN_AFTER)] == [False] * DOWN_AFTER
    assert changes == [False] and not w.up
    assert not w.tick() and changes == [False]  # no repeat while it stays down
    store.up = True
    assert w.tick() and changes == [False, True] and w.failures == 0


def test_a_blip_shorter_than_the_threshold_changes_nothing() -> None:
    store, changes = Store(), []
    w = watch(store, changes)
    for _ in range(3):
        store.up = False
        for _ in range(DOWN_AFTER - 1):
            assert not w.tick()
        store.up = True
        assert w.tick()
    assert changes == [] and w.up


def test_a_probe_that_hangs_counts_as_failed_and_is_not_started_twice() -> None:
    store, changes = Store(), []
    w = watch(store, changes)
    store.release.clear()  # the store accepts the read and never answers
    for _ in range(DOWN_AFTER):
        assert not w.tick()
    assert changes == [False]
    pending = w._pending
    assert not w.tick() and w._pending is pending  # still the one hung probe
    store.release.set()
    assert pending.done.wait(5)
    assert w.tick() and changes == [False, True]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        StoreWatch(lambda: None, lambda up, why: None, interval_s=0, stop=threading.Event())
    with pytest.raises(ConfigError, match="store_probe_s"):
        ServerConfig(store_probe_s=-1)
    with pytest.raises(ConfigError, match="event_queue_size"):
        ServerConfig(event_queue_size=0)


def test_a_hung_probe_does_not_keep_the_process_from_exiting() -> None:
    """A probe stuck in a store that never answers must not block interpreter exit (after
    SIGTERM the server returns from main; a non-daemon probe thread would hang it)."""
    code = (
        "import threading\n"
        "from serving.storewatch import StoreWatch\n"
        "w = StoreWatch(threading.Event().wait, lambda up, why: None, 0.05, threading.Event())\n"
        "assert not w.tick()\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, timeout=30)
    assert done.returncode == 0
