"""The ranking servicer and the server factory; only ``serving.__main__.main`` blocks.

``create_server(config, servicer)`` registers the RankingService, grpc.health.v1 and
reflection, binds ``config.host:config.port`` (0 = a free port) and returns
``(server, port)``, with TLS and the token check when the config asks for them
(serving.security, docs/SECURITY.md). The servicer gets its feature client, model and
event log in ``__init__`` so a test can start it on port 0. Every handler catches
everything and maps it to a status code in one place (``_handle``); no request can crash
the process.

Overload: the server takes at most ``config.in_flight_limit`` RPCs at once (gRPC's
``maximum_concurrent_rpcs``: one more is RESOURCE_EXHAUSTED at once, not queued), and a
Rank whose deadline has passed while it waited for a thread is answered
DEADLINE_EXCEEDED without being scored (``tailrank_deadline_expired_total``).
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core import contract
from core.ids import MAX_ID_BYTES, MAX_REQUEST_ID_BYTES, id_problem
from serving import metrics
from serving.api.tailrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.config import ServerConfig
from serving.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    status_for,
)
from serving.eventlog import Impression, parse_feedback
from serving.features import FeatureClient
from serving.histories import LiveHistories
from serving.inference import Model
from serving.itemtable import SHARED_TABLE_ENV, ItemTable
from serving.modelswap import ModelSlot, check_at_start
from serving.ranker import RankArgs, Ranker, Ranking
from serving.security import Security
from serving.storewatch import StoreWatch

log = logging.getLogger(__name__)

SERVICE_NAME = ranking_pb2.DESCRIPTOR.services_by_name["RankingService"].full_name
UNKNOWN_ITEM = "unknown item: not in the feature store"
MIN_TIME_LEFT_S = 0.001  # less than this left of the caller's deadline: do not start scoring
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` (from the context of the handling thread) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def _check_id(name: str, value: str, max_bytes: int = MAX_ID_BYTES) -> None:
    problem = id_problem(name, value, max_bytes)
    if problem:
        raise InvalidArgument(problem)


def validate(request: ranking_pb2.RankRequest, max_candidates: int, tail_weight: float) -> RankArgs:
    """Check a RankRequest; raise InvalidArgument saying which field to fix and how."""
    _check_id("user_id", request.user_id)
    candidates = list(request.candidate_ids)
    if not candidates:
        raise InvalidArgument("candidate_ids is empty: send at least one candidate item id")
    if len(candidates) > max_candidates:
        raise InvalidArgument(
            f"candidate_ids has {len(candidates)} ids, more than the limit {max_candidates}: "
            "split the request"
        )
    # fast path: only ids of more than 64 characters can exceed 256 UTF-8 bytes
    nul = "\x00" in "".join(candidates)  # one C-level scan instead of one per id
    for i, item in enumerate(candidates):
        if not item or len(item) > MAX_ID_BYTES // 4 or (nul and "\x00" in item):
            _check_id(f"candidate_ids[{i}]", item)
    if len(set(candidates)) != len(candidates):
        seen: set[str] = set()
        dup = next(c for c in candidates if c in seen or seen.add(c))
        raise InvalidArgument(f"candidate_ids has duplicates (e.g. {dup!r}): send each id once")
    if request.top_k < 0:
        raise InvalidArgument(f"top_k is {request.top_k}: use 0 (all) or a positive number")
    if request.HasField("tail_weight"):
        tail_weight = request.tail_weight
        if not 0.0 <= tail_weight <= 1.0:
            raise InvalidArgument(f"tail_weight is {tail_weight}: use a value in [0, 1]")
    request_id = request.request_id or uuid.uuid4().hex
    _check_id("request_id", request_id, MAX_REQUEST_ID_BYTES)
    return RankArgs(
        request.user_id, candidates, request.top_k, tail_weight, request_id, request.explain
    )


def live_histories(config: ServerConfig, features: FeatureClient) -> LiveHistories | None:
    """Feedback -> user history (serving.histories), keeping as many items as the offline
    path: ``--history-len``, else the features step's (features_summary.json), else 50."""
    if not config.live_histories:
        return None
    limit = config.history_len or int(
        features.user_source_summary().get("history_len") or contract.DEFAULT_HISTORY_LEN
    )
    log.info("event=live_histories history_len=%d", limit)
    return LiveHistories(features, limit)


class RankingServicer(ranking_pb2_grpc.RankingServiceServicer):
    """Rank and Feedback over a FeatureClient, a Model and an optional EventLog."""

    def __init__(
        self, config: ServerConfig, features: FeatureClient, model: Model, event_log=None
    ) -> None:
        self.config = config
        self.features = features
        self.models = ModelSlot(config, features, model)  # the model bundle (hot swap)
        self.event_log = event_log
        self.histories = live_histories(config, features) if event_log is not None else None
        self._upserter = None  # serving.upsert.ItemUpserter, loaded by the first UpsertItems
        self._upserter_lock = threading.Lock()
        self.health = health.HealthServicer(experimental_non_blocking=True)
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._stop = threading.Event()
        self.store_watch: StoreWatch | None = None  # started by start() (store_probe_s > 0)

    @property
    def model(self) -> Model:
        """The model serving now (a request reads ``self.models.current`` once instead)."""
        return self.models.current.model

    @property
    def ranker(self) -> Ranker:
        return self.models.current.ranker

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Fill the item cache, check and warm the model up, then report SERVING."""
        if self.config.item_cache:  # a failure here stops start-up (no silent empty cache)
            metrics.CACHE_ITEMS.set(self.models.refresh_table(self._table_for))
        check_at_start(self.model, self.features.content_dim)
        metrics.set_model(self.model.version, self.model.provider)
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.config.item_cache and self.config.cache_refresh_s > 0 and not self.shared_table:
            threading.Thread(target=self._refresh_loop, name="cache-refresh", daemon=True).start()
        if self.config.model_watch_s > 0:
            args = (self._stop, self.config.model_watch_s)
            threading.Thread(
                target=self.models.watch, args=args, name="model-watch", daemon=True
            ).start()
        if self.config.store_probe_s > 0:  # health NOT_SERVING while the store stays down
            self.store_watch = StoreWatch(self.features.check_store, self._store_health,
                                          self.config.store_probe_s, self._stop)  # fmt: skip
            self.store_watch.start()
            self.features.reconnect_on_read = False  # the probe reconnects; calls fail fast
        log.info("event=serving model_version=%s", self.model.version)

    def check_model(self, force: bool = False) -> str:
        """Swap in a new export of ``--model`` when there is one and it passes every check
        (serving.modelswap); the old model keeps serving otherwise."""
        return self.models.check(force)

    def refresh_cache(self) -> bool:
        """Reload the item cache from the online store; keep the old one on failure."""
        try:
            n = self.models.refresh_table(self._table_for)
        except Exception as exc:
            metrics.CACHE_REFRESHES.labels("error").inc()
            log.error("event=cache_refresh_failed error=%r (keeping the previous cache)", exc)
            return False
        metrics.CACHE_REFRESHES.labels("ok").inc()
        metrics.CACHE_ITEMS.set(n)
        return True

    @property
    def shared_table(self) -> str | None:
        """The item table file a supervisor built for all its workers (None: build one's own)."""
        return os.environ.get(SHARED_TABLE_ENV) or None

    def _table_for(self, model: Model) -> ItemTable:
        """Map the supervisor's shared table (indexed again when it was built for another
        vocabulary: a worker that swapped models), or build this process's own from the
        store; it becomes the feature client's table."""
        if self.shared_table:
            table = ItemTable.open(Path(self.shared_table)).for_vocab(model.item_ids)
            self.features.use_table(table, model.item_ids)
        else:
            self.features.load_cache(model.item_ids, self.config.cache_batch_size)
        return self.features.table

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.config.cache_refresh_s):
            self.refresh_cache()

    def shutting_down(self) -> None:
        """Health NOT_SERVING for every service; stop the refresher."""
        self._stop.set()
        self.health.enter_graceful_shutdown()

    def _store_health(self, up: bool, reason: str) -> None:
        """The online store went down (several probes failed) or answers again: the
        RankingService's health (readiness) follows it; "" (liveness) stays SERVING, since
        a restart cannot bring a store back and a process cannot start without it."""
        if not up:  # calls fail at once from now on, not after the store's own timeouts
            self.features.mark_down(reason)
        serving = health_pb2.HealthCheckResponse.SERVING
        status = serving if up else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set(SERVICE_NAME, status)

    def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    # --- RPCs ----------------------------------------------------------------------------
    def Rank(self, request, context):  # noqa: N802 (gRPC method name)
        return _handle(
            "Rank", context, ranking_pb2.RankResponse,
            lambda: self._rank(_decoded(request), context),
        )  # fmt: skip

    def Feedback(self, request, context):  # noqa: N802
        return _handle(
            "Feedback", context, ranking_pb2.FeedbackResponse,
            lambda: self._feedback(_decoded(request)),
        )  # fmt: skip

    def UpsertItems(self, request, context):  # noqa: N802
        return _handle(
            "UpsertItems", context, ranking_pb2.UpsertItemsResponse,
            lambda: self._upsert_items(_decoded(request)),
        )  # fmt: skip

    def upserter(self):  # -> serving.upsert.ItemUpserter
        """The item upserter, built on first use (it loads the sentence encoder, ~1 s)."""
        with self._upserter_lock:
            if self._upserter is None:
                from serving.upsert import ItemUpserter

                summary = self.features.item_source_summary()
                self._upserter = ItemUpserter(self.features, summary, self.event_log)
            return self._upserter

    def _upsert_items(self, request) -> ranking_pb2.UpsertItemsResponse:
        from serving.upsert import parse_upserts

        upserter = self.upserter()
        items = parse_upserts(request, upserter.catalogue)
        created, updated = upserter.upsert(items)
        return ranking_pb2.UpsertItemsResponse(
            upserted=created + updated, created=created, updated=updated
        )

    def _feedback(self, request: ranking_pb2.FeedbackRequest) -> ranking_pb2.FeedbackResponse:
        if self.event_log is None:
            raise FailedPrecondition("event log disabled: start the server with --event-log-url")
        events = parse_feedback(request)
        accepted = self.event_log.record_feedback(events)
        if self.histories is not None:
            try:
                self.histories.apply(events)
            except Unavailable as exc:  # stored in the log: the offline rebuild restores it
                metrics.HISTORY_UPDATES.labels("error").inc(len(events))
                log.warning("event=history_update_failed events=%d error=%s", len(events), exc)
        return ranking_pb2.FeedbackResponse(accepted=accepted)

    def _rank(
        self, request: ranking_pb2.RankRequest, context: grpc.ServicerContext | None = None
    ) -> ranking_pb2.RankResponse:
        REQUEST_ID.set(request.request_id[:MAX_REQUEST_ID_BYTES] or "-")
        args = validate(request, self.config.max_candidates, self.config.tail_weight)
        REQUEST_ID.set(args.request_id)
        _check_deadline("Rank", context)
        metrics.CANDIDATES.observe(len(args.candidates))
        bundle = self.models.current  # read once: this request uses this model throughout
        ranking = bundle.ranker.rank(args)
        response = ranking_pb2.RankResponse(
            model_version=bundle.model.version, cold_user=ranking.cold_user,
            request_id=args.request_id, tail_weight=args.tail_weight,
        )  # fmt: skip
        for item_id in ranking.unscored:
            response.unscored.add(item_id=item_id, reason=UNKNOWN_ITEM)
        metrics.UNSCORED.inc(len(ranking.unscored))
        metrics.COLD_USERS.inc(int(ranking.cold_user))
        if ranking.ids:
            _fill_items(response, ranking, args)
            self._log_impressions(args, response)
        log.info(
            "event=rank user=%s candidates=%d unscored=%d cold=%s returned=%d",
            args.user_id, len(args.candidates), len(response.unscored), ranking.cold_user,
            len(response.items),
        )  # fmt: skip
        return response

    def _log_impressions(self, args: RankArgs, response: ranking_pb2.RankResponse) -> None:
        """Queue the returned items as impressions; never blocks the hot path."""
        if self.event_log is None or not response.items:
            return
        now = datetime.now(UTC)
        rows = [
            Impression(
                args.request_id,
                args.user_id,
                it.item_id,
                pos,
                it.score,
                it.click_probability,
                it.is_tail,
                response.model_version,
                now,
            )  # fmt: skip
            for pos, it in enumerate(response.items, start=1)
        ]
        if not self.event_log.log_impressions(rows):
            log.warning("event=impressions_dropped rows=%d (event-log queue full)", len(rows))


def _check_deadline(method: str, context: grpc.ServicerContext | None) -> None:
    """Raise DeadlineExceeded (and count it) when the caller has stopped waiting.

    Under overload a call can wait in the thread pool's queue past its deadline; scoring
    it then would only take a thread from a call that can still be answered in time.
    """
    if context is None or context.time_remaining() > MIN_TIME_LEFT_S:  # no deadline: inf
        return
    metrics.EXPIRED.labels(method).inc()
    raise DeadlineExceeded("the deadline passed before the request was scored: not scored")


def _fill_items(response: ranking_pb2.RankResponse, ranking: Ranking, args: RankArgs) -> None:
    """The ranked items (and their score parts when asked) into the response; tail metrics.

    ``items.add`` per item, with Python floats converted once per array: measured faster
    than building RankedItem messages and ``extend`` (12.6 vs 15.2 us for 10 items)."""
    add = response.items.add
    scores, probs, tails = ranking.score.tolist(), ranking.prob.tolist(), ranking.is_tail.tolist()
    for j, item_id in enumerate(ranking.ids):
        prob, tail = probs[j], tails[j]
        item = add(item_id=item_id, score=scores[j], click_probability=prob, is_tail=tail)
        if args.explain:
            item.explanation.update(
                {"logit": float(ranking.logit[j]), "click_probability": prob,
                 "tail_boost": float(ranking.boost[j]), "p_tail_user": ranking.p_tail,
                 "tail_weight": args.tail_weight, "is_tail": float(tail)}
            )  # fmt: skip
            if ranking.because is not None:
                for hist_id, weight in ranking.because[j]:
                    item.because.add(item_id=hist_id, weight=weight)
    n_tail = int(ranking.is_tail.sum())
    metrics.TAIL_SHARE.observe(n_tail / len(ranking.ids))
    metrics.ITEMS_SERVED.inc(len(ranking.ids))
    metrics.TAIL_SERVED.inc(n_tail)


class Undecodable(NamedTuple):
    """A request body that does not parse as its method's message (e.g. a string field
    that is not UTF-8). gRPC answers INTERNAL when a deserializer raises, so ``_parse``
    returns this instead and the handler answers INVALID_ARGUMENT (``_decoded``)."""

    message: str  # the expected message type's full name
    error: str


def _parse(message_type: type) -> Callable[[bytes], object]:
    def parse(body: bytes) -> object:
        try:
            return message_type.FromString(body)
        except DecodeError as exc:
            return Undecodable(message_type.DESCRIPTOR.full_name, str(exc))

    return parse


def _decoded(request: object) -> object:
    if isinstance(request, Undecodable):
        raise InvalidArgument(
            f"the request is not a valid {request.message} ({request.error}): "
            "string fields must be UTF-8"
        )
    return request


def _add_ranking_service(servicer: RankingServicer, server: grpc.Server) -> None:
    """What ``ranking_pb2_grpc.add_RankingServiceServicer_to_server`` does, every method
    of the proto's service, with ``_parse`` as the request deserializer."""
    service = ranking_pb2.DESCRIPTOR.services_by_name["RankingService"]
    handlers = {
        m.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, m.name),
            request_deserializer=_parse(getattr(ranking_pb2, m.input_type.name)),
            response_serializer=getattr(ranking_pb2, m.output_type.name).SerializeToString,
        )
        for m in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _handle(method: str, context: grpc.ServicerContext, empty: type, call: Callable):
    """Run one RPC body: map any exception to a status, count it, never raise."""
    token = REQUEST_ID.set("-")
    start = time.perf_counter()
    code = grpc.StatusCode.OK
    try:
        return call()
    except BaseException as exc:  # nothing may escape a handler
        code, message = status_for(exc)
        level = logging.ERROR if code is grpc.StatusCode.INTERNAL else logging.WARNING
        log.log(level, "event=rpc_error method=%s code=%s message=%r", method, code.name, message,
                exc_info=code is grpc.StatusCode.INTERNAL)  # fmt: skip
        context.set_code(code)
        context.set_details(message)
        return empty()
    finally:
        metrics.observe_rpc(method, code, time.perf_counter() - start)
        REQUEST_ID.reset(token)


def create_server(
    config: ServerConfig,
    servicer: RankingServicer,
    reuse_port: bool = False,
    security: Security | None = None,
) -> tuple[grpc.Server, int]:
    """Register RankingService, health and reflection; bind; start; return (server, port).

    ``reuse_port``: bind with SO_REUSEPORT, so that the other worker processes of
    ``--processes N`` bind the same port and the kernel spreads connections over them.
    Off, a port some other server holds is an error rather than shared traffic.
    ``security``: TLS and the token check (serving.security); None reads them from
    ``config`` here (plaintext and no tokens when it names neither).
    """
    security = security or Security.from_config(config)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers),
        interceptors=security.interceptors,
        maximum_concurrent_rpcs=config.in_flight_limit,
        options=[("grpc.so_reuseport", int(reuse_port))],
    )
    _add_ranking_service(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(servicer.health, server)
    names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    port = security.bind(server, f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"cannot bind {config.host}:{config.port}: is the port in use?")
    server.start()
    log.info(
        "event=listening host=%s port=%d tls=%s mtls=%s tokens=%s", config.host, port,
        security.tls is not None, bool(security.tls and security.tls.mutual),
        security.auth is not None,
    )  # fmt: skip
    return server, port
