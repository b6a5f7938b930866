"""Health follows the online store: a probe loop that turns NOT_SERVING while it stays down.

Every ``interval_s`` a daemon thread reads one probe id from the online store
(``FeatureClient.check_store``) in a helper daemon thread (a probe stuck in a hung store
must not keep the process from exiting). ``DOWN_AFTER`` failed probes in a row (an error,
or no answer within ``interval_s``: a store that hangs) call ``on_change(False, why)``:
the servicer turns ``tailrank.v1.RankingService`` NOT_SERVING, so readiness probes and
load balancers stop sending to this process (``""``, liveness, stays SERVING), and marks
the store down, so calls fail at once. The first probe that answers calls
``on_change(True, "")``. A blip shorter than ``DOWN_AFTER`` ticks changes nothing (Rank
still answers UNAVAILABLE for the calls it hits). While the store is marked down the probe
is also what reconnects it (serving.features ``_reconnect``), so a process recovers with
no traffic and no restart. docs/RELIABILITY.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

DOWN_AFTER = 3  # failed probes in a row before health turns NOT_SERVING

STORE_UP = Gauge(
    "tailrank_online_store_up",
    "1 while the online store answers the health probe, 0 once it failed DOWN_AFTER in a row",
    multiprocess_mode="livemin",  # --processes N: 0 when any process sees it down
)
PROBE_FAILURES = Counter(
    "tailrank_online_store_probe_failures_total", "Online store health probes that failed"
)


class StoreWatch:
    """Probe ``probe`` every ``interval_s``; report up/down changes to ``on_change(up,
    the last probe's error)``."""

    def __init__(
        self,
        probe: Callable[[], object],
        on_change: Callable[[bool, str], None],
        interval_s: float,
        stop: threading.Event,
        down_after: int = DOWN_AFTER,
    ) -> None:
        if interval_s <= 0 or down_after < 1:
            raise ValueError("interval_s must be > 0 and down_after >= 1")
        self.probe, self.on_change = probe, on_change
        self.interval_s, self.down_after = interval_s, down_after
        self._stop = stop
        self._pending: _Probe | None = None
        self.failures = 0  # failed probes in a row
        self.up = True
        self._since = time.monotonic()
        STORE_UP.set(1)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._loop, name="store-watch", daemon=True)
        thread.start()
        return thread

    def _loop(self) -> None:
        wait = self.interval_s
        while not self._stop.wait(wait):
            start = time.monotonic()
            self.tick()  # waits up to interval_s for the probe
            wait = max(0.0, self.interval_s - (time.monotonic() - start))

    def tick(self) -> bool:
        """Run one probe (waiting at most ``interval_s``); update the state; True if it answered."""
        ok, error = self._probe_once()
        if ok:
            if not self.up:
                log.info("event=online_store_up down_s=%.1f", time.monotonic() - self._since)
                self._set(True, "")
            self.failures = 0
            return True
        PROBE_FAILURES.inc()
        self.failures += 1
        log.warning("event=store_probe_failed failures=%d error=%s", self.failures, error)
        if self.up and self.failures >= self.down_after:
            log.error("event=online_store_unreachable failures=%d health=NOT_SERVING",
                      self.failures)  # fmt: skip
            self._set(False, error)
        return False

    def _probe_once(self) -> tuple[bool, str]:
        """(answered, why not). A probe still running from an earlier tick is a failure."""
        if self._pending is None or self._pending.done.is_set():
            self._pending = _Probe(self.probe)
        if not self._pending.done.wait(self.interval_s):
            return False, f"no answer within {self.interval_s:.1f}s"
        if self._pending.error is not None:
            return False, repr(self._pending.error)[:300]
        return True, ""

    def _set(self, up: bool, reason: str) -> None:
        self.up, self._since = up, time.monotonic()
        STORE_UP.set(int(up))
        self.on_change(up, reason)


class _Probe:
    """One probe call in its own daemon thread; ``done`` is set when it returned or raised."""

    def __init__(self, probe: Callable[[], object]) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        threading.Thread(target=self._run, args=(probe,), name="store-probe", daemon=True).start()

    def _run(self, probe: Callable[[], object]) -> None:
        try:
            probe()
        except Exception as exc:  # noqa: BLE001 - any failure of the probe is "down"
            self.error = exc
        finally:
            self.done.set()
