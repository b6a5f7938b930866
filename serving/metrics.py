"""Prometheus metrics of the ranking server (default registry, served over HTTP).

The default registry is used on purpose: the event log's counters (serving.eventlog) show
up on the same endpoint. Scrape ``http://<host>:<metrics-port>/metrics``.

With several server processes (``--processes``) prometheus_client runs in multiprocess
mode: the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before a worker starts, each worker
writes its values to files there, and the supervisor's endpoint sums them
(``serve_multiprocess``). That mode has no Info metrics and no ``Gauge.set_function``, so
the model is a gauge of value 1 with labels, and every gauge says how processes combine.
"""

from __future__ import annotations

import logging
import warnings

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
    values,
)

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "tailrank_requests_total", "RPCs handled, by method and status code", ["method", "code"]
)
ERRORS = Counter("tailrank_errors_total", "RPCs that ended in a non-OK status", ["method", "code"])
LATENCY = Histogram(
    "tailrank_request_latency_seconds",
    "Server-side latency of an RPC, from receipt to response",
    ["method"],
    buckets=(0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CANDIDATES = Histogram(
    "tailrank_candidates_per_request",
    "Candidates in a Rank request",
    buckets=(1, 10, 25, 50, 100, 200, 500, 1000, 2000),
)
CACHE_HITS = Counter("tailrank_item_cache_hits_total", "Item lookups served by the cache")
CACHE_MISSES = Counter("tailrank_item_cache_misses_total", "Item lookups sent to Feast")
CACHE_ITEMS = Gauge(
    "tailrank_item_cache_items", "Items held in the in-process cache", multiprocess_mode="livemax"
)
CACHE_REFRESHES = Counter(
    "tailrank_item_cache_refreshes_total", "Cache reloads from the online store", ["result"]
)
TAIL_SERVED = Counter("tailrank_tail_items_served_total", "Long-tail items returned by Rank")
ITEMS_SERVED = Counter("tailrank_items_served_total", "Items returned by Rank")
TAIL_SHARE = Histogram(
    "tailrank_tail_share",
    "Share of long-tail items in each returned list",
    buckets=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
COLD_USERS = Counter("tailrank_cold_users_total", "Rank requests for users unknown to Feast")
UNSCORED = Counter("tailrank_unscored_items_total", "Candidates that could not be scored")
ITEMS_UPSERTED = Counter(
    "tailrank_items_upserted_total",
    "Items written by UpsertItems: created (new to the store) or updated (text replaced)",
    ["result"],
)
HISTORY_UPDATES = Counter(
    "tailrank_history_updates_total",
    "Feedback events applied to user histories in the online store, by result: applied, "
    "duplicate (already held), too_old (older than a full history), error (store down)",
    ["result"],
)
# an Info metric in form (value 1, the facts as labels), which multiprocess mode can sum
MODEL = Gauge(
    "tailrank_model_info", "The model being served", ["version", "provider"],
    multiprocess_mode="livemax",
)  # fmt: skip
MODEL_SWAPS = Counter(
    "tailrank_model_swaps_total",
    "New exports checked for a hot swap: ok (swapped in) or refused (the old model serves on)",
    ["result"],
)
MODEL_LOADED = Gauge(
    "tailrank_model_loaded_timestamp_seconds", "When the model was loaded",
    multiprocess_mode="livemax",
)  # fmt: skip
EXPIRED = Counter(
    "tailrank_deadline_expired_total",
    "RPCs not worked on because the caller's deadline had passed",
    ["method"],
)
AUTH_REFUSED = Counter(
    "tailrank_auth_refused_total",
    "RPCs refused for their bearer token (UNAUTHENTICATED, PERMISSION_DENIED)",
    ["method", "code"],
)
SECURITY_RELOADS = Counter(
    "tailrank_security_reloads_total",
    "Certificate and token reloads (SIGHUP); an error keeps the ones in use",
    ["what", "result"],
)
PROCESS_UP = Gauge(
    "tailrank_process_up",
    "1 per server process that is SERVING (one series per pid with --processes > 1)",
    multiprocess_mode="liveall",
)


def observe_rpc(method: str, code: grpc.StatusCode, seconds: float) -> None:
    """Count one finished RPC and its latency."""
    name = code.name
    REQUESTS.labels(method, name).inc()
    if code is not grpc.StatusCode.OK:
        ERRORS.labels(method, name).inc()
    LATENCY.labels(method).observe(seconds)


def set_model(version: str, provider: str, previous: tuple[str, str] | None = None) -> None:
    """Publish which model (and ONNX Runtime provider) is serving; ``previous`` (version,
    provider), the one it replaced, drops to 0 (its series is removed where it can be:
    in multiprocess mode a removed series would keep its last value in this process's file)."""
    if previous is not None and previous != (version, provider):
        MODEL.labels(*previous).set(0)
        if not multiprocess_mode():
            with warnings.catch_warnings():  # it warns whenever the variable is set (feast)
                warnings.simplefilter("ignore", UserWarning)
                MODEL.remove(*previous)
    MODEL.labels(version, provider).set(1)
    MODEL_LOADED.set_to_current_time()


def multiprocess_mode() -> bool:
    """True when this process's metric values live in multiprocess-mode files.

    prometheus_client decides once, when it is first imported, from
    ``PROMETHEUS_MULTIPROC_DIR``; the variable alone proves nothing afterwards (importing
    feast sets it when it is missing).
    """
    return values.ValueClass is not values.MutexValue


def start_metrics_server(
    port: int, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None
) -> int:
    """Serve /metrics on ``port`` (0 = a free port) in a daemon thread; returns the port."""
    kwargs = {} if registry is None else {"registry": registry}
    httpd, _ = start_http_server(port, addr=addr, **kwargs)
    bound = int(httpd.server_address[1])
    log.info("event=metrics_listening port=%d", bound)
    return bound
