"""Run the tailrank gRPC ranking server (the only place that blocks).

    python -m serving --repo feature_repo --model artifacts/movielens-100k --port 50051
    python -m serving --processes 2 ...   # a supervisor and 2 worker processes, one port

Start-up: load manifest + ONNX once, check the provider, fill the item cache from the
online store, warm up, then health SERVING. SIGHUP reloads the TLS certificates, the
token hashes and the item cache, and swaps in a new export of --model once it passes
its checks (docs/SECURITY.md, docs/SERVING.md "Model hot swap"); SIGTERM/SIGINT
turn health NOT_SERVING, stop taking calls, let in-flight ones finish within --grace-s,
then flush the event log. With ``--processes`` above 1 (the default is one per core) this
process becomes the supervisor of serving.supervisor and each worker it starts runs
``serve`` with SO_REUSEPORT. See docs/SERVING.md.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from serving import metrics
from serving.config import ServerConfig, load_config
from serving.errors import ConfigError, TailrankError
from serving.features import FeatureClient
from serving.inference import Model
from serving.security import Security
from serving.server import RankingServicer, RequestIdFilter, create_server
from serving.supervisor import READY_FD_ENV, SUPERVISOR_PID_ENV, supervise

log = logging.getLogger("serving")

LOG_FORMAT = (
    "ts=%(asctime)s level=%(levelname)s pid=%(process)d logger=%(name)s "
    "request_id=%(request_id)s %(message)s"
)


def configure_logging(level: str = "INFO") -> None:
    """key=value logs on stderr, each line with the request id of its RPC (or '-')."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def build_servicer(config: ServerConfig) -> RankingServicer:
    """Model, feature client and event log from the config; not yet started."""
    # a symlink --model is resolved once here, so every file comes from one run directory
    model = Model(config.model.resolve(), provider=config.provider, threads=config.ort_threads)
    features = FeatureClient(config.repo, model.content_dim, fs_yaml=config.fs_yaml)
    event_log = None
    if config.event_log_url:
        from serving.eventlog import EventLog

        event_log = EventLog(config.event_log_url, queue_size=config.event_queue_size)
    return RankingServicer(config, features, model, event_log)


def serve(config: ServerConfig) -> None:
    """Start everything, then block until SIGTERM/SIGINT and shut down gracefully.

    Run by a worker of ``--processes N`` too: it then binds with SO_REUSEPORT, leaves
    /metrics to the supervisor, tells it when it is ready, and stops when it is orphaned.
    """
    supervisor = int(os.environ.get(SUPERVISOR_PID_ENV, "0"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # also while starting up
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    security = Security.from_config(config)  # certificates and tokens first: fail fast
    servicer = build_servicer(config)
    servicer.features.check_store()
    servicer.start()
    gc.collect()
    gc.freeze()  # start-up objects (Feast registry, cache) leave the GC's scans: fewer pauses
    if config.metrics_port >= 0 and not supervisor:
        metrics.start_metrics_server(config.metrics_port)
    server, port = create_server(config, servicer, reuse_port=bool(supervisor), security=security)

    def reload() -> None:
        security.reload()
        servicer.check_model(force=True)  # a new export in --model: checked, swapped in
        servicer.refresh_cache()

    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=reload).start())
    metrics.PROCESS_UP.set(1)
    log.info("event=ready port=%d provider=%s", port, servicer.model.provider)
    _tell_ready(os.environ.get(READY_FD_ENV))
    while not stop.wait(1.0):
        if supervisor and os.getppid() != supervisor:
            log.error("event=orphaned supervisor_pid=%d (it died): shutting down", supervisor)
            break
    metrics.PROCESS_UP.set(0)
    log.info("event=shutdown grace_s=%.1f", config.grace_s)
    servicer.shutting_down()
    server.stop(config.grace_s).wait()
    if servicer.event_log is not None:
        servicer.event_log.close()
    log.info("event=stopped")


def _tell_ready(fd: str | None) -> None:
    """Write one byte on the supervisor's ready pipe (when there is one) and close it."""
    if fd:
        os.write(int(fd), b"1")
        os.close(int(fd))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse flags/env, serve; exit 2 on bad config, 1 on a dependency down."""
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    supervising = config.process_count > 1 and not os.environ.get(SUPERVISOR_PID_ENV)
    try:
        if supervising:
            return supervise(config)
        serve(config)
    except ConfigError as exc:
        log.error("event=bad_config error=%s", exc)
        return 2
    except (TailrankError, OSError) as exc:
        log.error("event=start_failed error=%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
