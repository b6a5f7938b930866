"""The supervisor of ``python -m serving --processes N``: N worker processes on one port.

    python -m serving --processes 2 --port 50051 --metrics-port 9100

Python serves one request at a time per process (the GIL), so a machine's cores are used
by several server processes; gRPC's multiprocessing example shows how: every worker binds
the same port with SO_REUSEPORT and the kernel spreads incoming connections over them.
This process (the supervisor) creates no gRPC object at all. It checks the config,
reserves the port, prepares what the workers share (the Prometheus folder, the event
store's tables, the hook for a shared item table), then starts each worker as
``python -m serving`` with the same config in a fresh interpreter (fork + exec), so no
gRPC, ONNX Runtime or Feast state is ever copied by a fork.

- Metrics: prometheus_client multiprocess mode. Workers write their values under
  ``PROMETHEUS_MULTIPROC_DIR``, a fresh temporary folder the supervisor removes at exit;
  the supervisor serves ``/metrics`` on ``--metrics-port`` with every process summed, plus
  its own ``tailrank_worker_restarts_total`` and ``tailrank_workers{state}``.
- Health: each worker answers grpc.health.v1 for itself, SERVING once it is warm.
- A worker that dies is restarted after a back-off (1 s doubling to 30 s), counted in
  ``tailrank_worker_restarts_total`` and logged; its health endpoint is gone meanwhile
  (the kernel stops routing connections to a closed socket). More than
  ``MAX_RESTARTS`` deaths within ``RESTART_WINDOW_S``, or any worker failing during the
  first start-up, stops every worker and exits non-zero (1, or the worker's own 2 for bad
  config), so an orchestrator sees a crash loop instead of a server limping along.
- SIGTERM / SIGINT: forwarded to every worker, each drains (NOT_SERVING, in-flight calls
  get ``--grace-s``, its event log flushes); exit 0 once all exited 0. SIGHUP: the shared
  item table is rebuilt, then SIGHUP goes to every worker, which maps the new table,
  reads its TLS certificates and token hashes again (each worker has the same flags) and
  swaps in a new export of ``--model`` on its own (serving.modelswap).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from core.contract import ContractError, Manifest, read_vocab
from serving.config import ServerConfig, config_env_names, to_argv
from serving.errors import ConfigError
from serving.features import FeatureClient
from serving.itemtable import SHARED_TABLE_ENV
from serving.security import Security

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# set for each worker: the supervisor's pid (a worker whose supervisor is gone drains and
# exits) and the pipe on which the worker says it is ready (serving.__main__.serve)
SUPERVISOR_PID_ENV = "TAILRANK_SUPERVISOR_PID"
READY_FD_ENV = "TAILRANK_READY_FD"
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 30.0
MAX_RESTARTS, RESTART_WINDOW_S = 5, 60.0  # more deaths than this in the window: give up
KILL_AFTER_S = 35.0  # past --grace-s: the event log's flush timeout (30 s) and a margin


@dataclass
class Worker:
    """One worker process and what the supervisor knows of it."""

    slot: int
    proc: subprocess.Popen
    ready_fd: int | None
    ready: bool = False


@dataclass
class Counts:
    """The supervisor's own metrics (it serves them; they are not in the workers' files)."""

    expected: int
    restarts: int = 0
    deaths: deque[float] = field(default_factory=deque)  # monotonic times, last window


@contextmanager
def reserve_port(host: str, port: int) -> Iterator[int]:
    """Bind ``host:port`` (0 = a free port) with SO_REUSEPORT, without listening.

    The workers bind the same port; while this socket is held no other program can take
    it (one without SO_REUSEPORT gets EADDRINUSE), and it gets no connections itself.
    """
    family, kind, proto, _, addr = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise OSError(f"cannot bind {host}:{port}: is the port in use? ({exc})") from exc
        yield sock.getsockname()[1]
    finally:
        sock.close()


def metrics_dir(workdir: Path) -> Path:
    """A fresh folder for multiprocess mode (prometheus_client wants it empty at start).

    Always our own: a ``PROMETHEUS_MULTIPROC_DIR`` already in the environment cannot be
    told from the one importing feast sets for itself.
    """
    path = workdir / "metrics"
    path.mkdir()
    return path


def prepare_event_store(config: ServerConfig) -> None:
    """Create the event tables once, before N workers would race to create them."""
    if not config.event_log_url:
        return
    import sqlalchemy as sa

    from serving.errors import Unavailable
    from serving.eventschema import create_tables, make_engine

    engine = make_engine(config.event_log_url)
    try:
        create_tables(engine)  # on SQLite this connection also switches the file to WAL
    except sa.exc.SQLAlchemyError as exc:
        raise Unavailable(f"event store {engine.url!r} unreachable: {exc}") from exc
    finally:
        engine.dispose()


def build_table_file(
    repo: Path, model: Path, fs_yaml: Path | None, batch_size: int, path: Path, level: str
) -> int:
    """Read every stored item from the online store into an item table saved at ``path``;
    its size. Runs in a child process of the supervisor (``SharedTable.build``)."""
    logging.basicConfig(level=level.upper(), format="ts=%(asctime)s level=%(levelname)s "
                        "pid=%(process)d logger=%(name)s %(message)s")  # fmt: skip
    manifest = Manifest.read(model)
    _, vocab = read_vocab(model, manifest)
    features = FeatureClient(repo, manifest.content_dim, fs_yaml=fs_yaml)
    table = features.build_table(vocab, batch_size)
    table.save(path)
    return len(table)


class SharedTable:
    """The one item table every worker maps (serving/itemtable.py), built for them.

    ``build()`` reads every stored item from the online store once and saves the table to
    ``path`` atomically; workers open it memory-mapped (``SHARED_TABLE_ENV``), so N
    processes share one copy in the page cache instead of N. SIGHUP and
    ``--cache-refresh-s`` rebuild the file, then the workers map the new one.

    The build runs in a short-lived child process (``spawn``: its own Feast store and
    connections, nothing inherited): building a 1M-item table leaves about 2 GB of
    Python objects and arena pages behind in whichever process built it, and the
    supervisor lives as long as the server.
    """

    def __init__(self, config: ServerConfig, path: Path) -> None:
        try:
            Manifest.read(config.model)  # a broken model fails here, before any worker
        except ContractError as exc:
            raise ConfigError(str(exc)) from exc
        self.config, self.path, self.batch_size = config, path, config.cache_batch_size

    def build(self) -> int:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        args = (self.config.repo, self.config.model, self.config.fs_yaml, self.batch_size,
                self.path, self.config.log_level)  # fmt: skip
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            size = pool.submit(build_table_file, *args).result()
        log.info("event=shared_table_saved items=%d path=%s", size, self.path)
        return size


def shared_state(config: ServerConfig, workdir: Path) -> tuple[dict[str, str], SharedTable | None]:
    """What the supervisor builds once for all workers, and the environment naming it:
    the memory-mapped item table (none with ``--no-item-cache``)."""
    if not config.item_cache:
        return {}, None
    shared = SharedTable(config, workdir / "items.table")
    shared.build()
    return {SHARED_TABLE_ENV: str(shared.path)}, shared


def worker_command(config: ServerConfig, port: int) -> list[str]:
    """``python -m serving`` for one worker: this config, one process, no /metrics."""
    one = dataclasses.replace(config, processes=1, port=port, metrics_port=-1)
    return [sys.executable, "-m", "serving", *to_argv(one)]


class Supervisor:
    """Starts, watches, restarts and stops the worker processes (see the module doc)."""

    def __init__(
        self,
        config: ServerConfig,
        port: int,
        env: dict[str, str],
        table: SharedTable | None = None,
    ) -> None:
        self.config = config
        self.table = table
        self._rebuilding = threading.Lock()
        self.command = worker_command(config, port)
        # the config travels as flags: no TAILRANK_* variable may override one of them
        # (the store templates' TAILRANK_REDIS_* and the like do pass through)
        settings = config_env_names()
        self.env = {k: v for k, v in os.environ.items() if k not in settings}
        self.env.update(env, **{SUPERVISOR_PID_ENV: str(os.getpid())})
        self.workers: dict[int, Worker] = {}
        self.pending: dict[int, float] = {}  # slot -> monotonic time to restart it
        self.counts = Counts(config.process_count)
        self.serving = False  # every worker was ready once: deaths are restarted from now
        self.stop_signal: int | None = None
        self.hup = False

    def start(self, slot: int) -> None:
        read_fd, write_fd = os.pipe()
        env = {**self.env, READY_FD_ENV: str(write_fd)}
        try:
            proc = subprocess.Popen(self.command, env=env, pass_fds=(write_fd,))
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.workers[slot] = Worker(slot, proc, read_fd)
        log.info("event=worker_started slot=%d pid=%d", slot, proc.pid)

    def run(self) -> int:
        """Start every worker; watch them until a signal (exit 0) or a crash loop (1)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        for slot in range(self.counts.expected):
            self.start(slot)
        if self.table is not None and self.config.cache_refresh_s > 0:
            threading.Thread(target=self._refresh_loop, name="table-refresh", daemon=True).start()
        while self.stop_signal is None:
            failed = self._step()
            if failed is not None:
                self.stop_all()
                return failed
            time.sleep(0.1)
        log.info("event=shutdown signal=%d workers=%d", self.stop_signal, len(self.workers))
        return 0 if self.stop_all() else 1

    def _on_stop(self, signum: int, _frame: object) -> None:
        self.stop_signal = signum

    def _on_hup(self, _signum: int, _frame: object) -> None:
        self.hup = True

    def _step(self) -> int | None:
        """One look at the workers; an exit code when the server must stop."""
        if self.hup:
            self.hup = False
            threading.Thread(target=self.reload, name="table-rebuild", daemon=True).start()
        for w in list(self.workers.values()):
            self._poll_ready(w)
            code = w.proc.poll()
            if code is not None:
                failed = self._on_exit(w, code)
                if failed is not None:
                    return failed
        now = time.monotonic()
        for slot, when in list(self.pending.items()):
            if now >= when:
                del self.pending[slot]
                self.counts.restarts += 1
                self.start(slot)
        if not self.serving and all(w.ready for w in self.workers.values()):
            self.serving = True
            log.info("event=ready processes=%d", len(self.workers))
        return None

    def reload(self) -> None:
        """Rebuild the shared table (when there is one), then SIGHUP every worker so it
        maps the new file (or, without a shared table, reloads its own cache) and reads
        its TLS certificates and token hashes again. A failed rebuild keeps the old file:
        the workers are still signalled (for their certificates and tokens) and map the
        old one again."""
        with self._rebuilding:
            if self.table is not None:
                try:
                    self.table.build()
                except Exception as exc:  # the store may be down: keep the old table
                    log.error("event=shared_table_failed error=%r (workers keep the old)", exc)
            for w in list(self.workers.values()):
                if w.proc.poll() is None:
                    w.proc.send_signal(signal.SIGHUP)

    def _refresh_loop(self) -> None:
        """``--cache-refresh-s`` for the shared table: rebuild here, not in N workers."""
        while self.stop_signal is None:
            time.sleep(self.config.cache_refresh_s)
            if self.stop_signal is None:
                self.reload()

    def _poll_ready(self, w: Worker) -> None:
        if w.ready_fd is None:
            return
        try:
            data = os.read(w.ready_fd, 1)
        except BlockingIOError:
            return
        os.close(w.ready_fd)
        w.ready_fd, w.ready = None, bool(data)  # b"": closed unready (it is exiting)

    def _on_exit(self, w: Worker, code: int) -> int | None:
        """A worker exited on its own: restart it after a back-off, or give up."""
        from prometheus_client import multiprocess

        del self.workers[w.slot]
        if w.ready_fd is not None:
            os.close(w.ready_fd)
        multiprocess.mark_process_dead(w.proc.pid, os.environ.get(MULTIPROC_ENV))
        if not self.serving:
            log.error("event=start_failed slot=%d pid=%d code=%d", w.slot, w.proc.pid, code)
            return code if code in (1, 2) else 1
        now = time.monotonic()
        deaths = self.counts.deaths
        deaths.append(now)
        while deaths and deaths[0] < now - RESTART_WINDOW_S:
            deaths.popleft()
        if len(deaths) > MAX_RESTARTS:
            log.error(
                "event=crash_loop deaths=%d window_s=%.0f: stopping every worker",
                len(deaths), RESTART_WINDOW_S,
            )  # fmt: skip
            return 1
        delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (len(deaths) - 1))
        self.pending[w.slot] = now + delay
        log.error(
            "event=worker_died slot=%d pid=%d code=%d restart_in_s=%.1f",
            w.slot, w.proc.pid, code, delay,
        )  # fmt: skip
        return None

    def stop_all(self) -> bool:
        """SIGTERM every worker and wait for each to drain; True when all exited 0."""
        self.pending.clear()
        for w in self.workers.values():
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.grace_s + KILL_AFTER_S
        clean = True
        for w in self.workers.values():
            try:
                code = w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("event=worker_killed pid=%d (did not stop in time)", w.proc.pid)
                w.proc.kill()
                code = w.proc.wait()
            if w.ready_fd is not None:
                os.close(w.ready_fd)
            clean = clean and code == 0
            log.info("event=worker_stopped slot=%d pid=%d code=%d", w.slot, w.proc.pid, code)
        self.workers.clear()
        return clean


class SupervisorCollector:
    """The supervisor's metrics, read from its state when scraped."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.supervisor
        restarts = CounterMetricFamily(
            "tailrank_worker_restarts", "Worker processes restarted after one died"
        )
        restarts.add_metric([], s.counts.restarts)
        yield restarts
        workers = GaugeMetricFamily(
            "tailrank_workers", "Worker processes by state (--processes)", labels=["state"]
        )
        ready = sum(w.ready for w in s.workers.values())
        workers.add_metric(["expected"], s.counts.expected)
        workers.add_metric(["ready"], ready)
        workers.add_metric(["starting"], len(s.workers) - ready)
        workers.add_metric(["down"], s.counts.expected - len(s.workers))
        yield workers


def serve_metrics(supervisor: Supervisor, port: int, folder: Path) -> None:
    """/metrics on ``port``: every worker's values summed, and the supervisor's own."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from serving.metrics import start_metrics_server

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    registry.register(SupervisorCollector(supervisor))
    start_metrics_server(port, registry=registry)


def supervise(config: ServerConfig) -> int:
    """Run ``config.process_count`` workers until SIGTERM; the process's exit code.

    Raises ConfigError / TailrankError / OSError before any worker starts (bad config, an
    event store or port not to be had), as ``serve`` does.
    """
    Security.check(config)  # certificates and tokens readable and valid, or exit 2
    workdir = Path(tempfile.mkdtemp(prefix="tailrank-serving-"))
    try:
        with reserve_port(config.host, config.port) as port:
            folder = metrics_dir(workdir)
            os.environ[MULTIPROC_ENV] = str(folder)  # for mark_process_dead and the workers
            prepare_event_store(config)
            env, table = shared_state(config, workdir)
            supervisor = Supervisor(config, port, env, table)
            if config.metrics_port >= 0:
                serve_metrics(supervisor, config.metrics_port, folder)
            log.info("event=supervising processes=%d port=%d", config.process_count, port)
            code = supervisor.run()
            log.info("event=stopped code=%d", code)
            return code
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
