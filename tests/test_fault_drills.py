"""Fault drills: the real server process, a real dependency made to fail under it.

Each drill is one row of docs/RELIABILITY.md (what the client sees, health, metrics,
what is lost, how it recovers). The server is ``python -m serving --processes 1`` over the
tiny Feast repo and model; PostgreSQL and Redis are private throwaway servers
(tests/fixtures/pgcluster.py, tests/fixtures/redisproc.py), never the shared ones.

- the online store (PostgreSQL, Redis) stopped past a blip: Rank UNAVAILABLE at once,
  health NOT_SERVING while it stays down, SERVING and real rows again once it is back,
  no restart;
- PostgreSQL (the event log) restarted under load: every acknowledged impression stored;
- kill -9 under load: at most the event-log queue is lost, nothing is invented;
- the event log's disk full (and, on the EventLog, its files read-only): Rank keeps
  serving, every lost row is counted, writes resume.

Drills that exist elsewhere: SIGTERM with a call in flight (tests/test_serving_shutdown.py),
SIGTERM under load with two workers (tests/test_serving_processes.py).

    pytest tests/test_fault_drills.py
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pandas as pd
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core import schema
from serving.api.tailrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.server import SERVICE_NAME
from tests.fixtures.eventlog import count_rows
from tests.fixtures.features import POSTGRES_YAML, copy_feature_repo
from tests.fixtures.pgcluster import PgCluster
from tests.fixtures.redisproc import RedisServer
from tests.fixtures.serving import scrape_metrics
from tests.test_eventlog_serving import candidates
from tests.test_serving_shutdown import ROOT, free_port, wait_serving
from training import feast_repo

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TIMEOUT = 10.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
QUEUE, BATCH = 1000, 500  # --event-queue-size of two drills; EventLog's default batch_size


@dataclass
class Server:
    """A ``python -m serving --processes 1`` process and what a drill needs to reach it."""

    proc: subprocess.Popen
    port: int
    metrics_port: int
    log_path: Path
    channel: grpc.Channel

    def rank(self, request: ranking_pb2.RankRequest, timeout: float = TIMEOUT):
        return ranking_pb2_grpc.RankingServiceStub(self.channel).Rank(request, timeout=timeout)

    def health(self, service: str = SERVICE_NAME) -> int:
        """Health of ``service``: the RankingService (readiness), or "" (liveness)."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT).status

    def wait_health(self, status: int, timeout_s: float) -> float:
        """Seconds until health reports ``status``; fails after ``timeout_s``."""
        start = time.monotonic()
        while self.health() != status:
            assert self.proc.poll() is None, "the server exited"
            assert time.monotonic() - start < timeout_s, f"health not {status} in {timeout_s}s"
            time.sleep(0.1)
        return time.monotonic() - start

    def scrape(self) -> dict[str, float]:
        return scrape_metrics(self.metrics_port, TIMEOUT)


@pytest.fixture
def start_server(
    tiny_feature_repo: Path, tiny_model_dir: Path, tmp_path: Path
) -> Iterator[Callable[..., Server]]:
    """``start_server(*flags, env={...})``: the server, SERVING; killed at the end if alive."""
    started: list[Server] = []

    def start(*flags: str, env: dict[str, str] | None = None) -> Server:
        port, metrics_port = free_port(), free_port()
        argv = [sys.executable, "-m", "serving", "--processes", "1", "--repo",
                str(tiny_feature_repo), "--model", str(tiny_model_dir), "--host", "127.0.0.1",
                "--port", str(port), "--metrics-port", str(metrics_port), "--workers", "4",
                "--grace-s", "10", *flags]  # fmt: skip
        log_path = tmp_path / f"server-{len(started)}.log"
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(argv, cwd=ROOT, stdout=log_file, stderr=log_file, env=full_env)
        server = Server(proc, port, metrics_port, log_path,
                        grpc.insecure_channel(f"127.0.0.1:{port}"))  # fmt: skip
        started.append(server)
        wait_serving(server.channel, proc)
        return server

    yield start
    for server in started:
        server.channel.close()
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


@dataclass
class Load:
    """Threads sending Rank on their own connections until ``stop()``; every item of an OK
    response counted (what the event log was asked to store)."""

    server: Server
    request: ranking_pb2.RankRequest
    threads: int = 3
    items_served: int = 0
    ok: int = 0
    errors: list[grpc.StatusCode] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self._workers = [threading.Thread(target=self._run) for _ in range(self.threads)]
        for t in self._workers:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=30)

    def _run(self) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{self.server.port}") as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)
            while not self._stop.is_set():
                try:
                    reply = stub.Rank(self.request, timeout=TIMEOUT)
                except grpc.RpcError as exc:
                    with self._lock:
                        self.errors.append(exc.code())
                    time.sleep(0.05)
                    continue
                with self._lock:
                    self.items_served += len(reply.items)
                    self.ok += 1


@pytest.fixture(scope="module")
def warm_user(tiny_features_dir: Path) -> str:
    """A user the store holds with a history: a Rank for them reads a real row."""
    users = pd.read_parquet(Path(tiny_features_dir) / schema.USER_FEATURES_FILE)
    return str(users[users[schema.HISTORY].map(len) > 0][schema.USER_ID].iloc[0])


@pytest.fixture(scope="module")
def cands(tiny_features_dir: Path) -> list[str]:
    return candidates(Path(tiny_features_dir), 8)


# --- the online store down, then back --------------------------------------------------
@dataclass
class OnlineStore:
    """A private online store, materialized: the server's flags and env, and the fault."""

    kind: str
    flags: list[str]
    env: dict[str, str]
    stop: Callable[[], None]
    start: Callable[[], None]


@pytest.fixture(params=["postgres", "redis"])
def online_store(
    request: pytest.FixtureRequest, tiny_features_dir: Path, tmp_path: Path, monkeypatch
) -> OnlineStore:
    """The tiny features applied and materialized (``make materialize-store STORE=...``)
    into a private PostgreSQL (online store + SQL registry) or Redis (file registry)."""
    repo = copy_feature_repo(tmp_path / "repo")
    folder = repo / "data" / "shop"
    folder.mkdir(parents=True)
    for name in (schema.ITEM_FEATURES_FILE, schema.USER_FEATURES_FILE):
        (folder / name).write_bytes((Path(tiny_features_dir) / name).read_bytes())
    if request.param == "postgres":
        pg: PgCluster = request.getfixturevalue("private_postgres")
        database = f"online_{uuid.uuid4().hex[:8]}"
        pg.create_database(database)
        env = {"TAILRANK_PG_HOST": "127.0.0.1", "TAILRANK_PG_PORT": str(pg.port),
               "TAILRANK_PG_DB": database, "TAILRANK_PG_USER": "postgres",
               "TAILRANK_PG_PASSWORD": ""}  # fmt: skip
        template, stop, start = repo / POSTGRES_YAML, pg.stop, pg.start
    else:
        redis_server: RedisServer = request.getfixturevalue("private_redis")
        env = {"TAILRANK_REDIS_HOST": "127.0.0.1", "TAILRANK_REDIS_PORT": str(redis_server.port),
               "TAILRANK_REDIS_PASSWORD": ""}  # fmt: skip
        template = repo / "feature_store.redis.yaml"
        stop, start = redis_server.stop, redis_server.start
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    fs_yaml = feast_repo.write_dataset_config(template, repo, folder, "drill")
    feast_repo.materialize_repo(repo, fs_yaml, folder)
    flags = ["--repo", str(repo), "--fs-yaml", str(fs_yaml), "--no-event-log",
             "--store-probe-s", "0.5"]  # fmt: skip
    return OnlineStore(request.param, flags, env, stop, start)


def test_online_store_down_is_unavailable_not_serving_then_recovers(
    start_server, online_store: OnlineStore, warm_user: str, cands: list[str]
) -> None:
    """Stopped for longer than a blip: every Rank UNAVAILABLE (fast, not the 30 s pool
    wait), the RankingService's health NOT_SERVING after 3 failed probes ("" stays
    SERVING); back: SERVING and the user's real row again, same process."""
    server = start_server(*online_store.flags, env=online_store.env)
    request = ranking_pb2.RankRequest(user_id=warm_user, candidate_ids=cands, top_k=3)
    assert not server.rank(request).cold_user  # a real row from the store
    online_store.stop()
    try:
        codes, slowest = [], 0.0
        down_for = time.monotonic()
        while server.health() == SERVING:
            assert time.monotonic() - down_for < 20, "health still SERVING 20 s into the outage"
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                server.rank(request, timeout=30)  # the store's own timeouts (Redis: retries)
            slowest = max(slowest, time.monotonic() - start)
            codes.append(err.value.code())
            details = err.value.details()
            assert f"the {online_store.kind} online store" in details
            assert "did not answer" in details and "retry" in details
            time.sleep(0.2)
        assert set(codes) <= {grpc.StatusCode.UNAVAILABLE}
        for _ in range(3):  # it stays down: NOT_SERVING, UNAVAILABLE at once
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                server.rank(request)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - start < 2.0  # refused without touching the store
            assert server.health() == NOT_SERVING
            assert server.health("") == SERVING  # alive: no restart wanted, none would help
            time.sleep(0.2)
        # PostgreSQL: at once, never the pool's 30 s wait; redis-py retries for 4-10 s first
        assert slowest < (5.0 if online_store.kind == "postgres" else 20.0)
        assert server.scrape()["tailrank_online_store_up"] == 0
    finally:
        online_store.start()
    assert server.wait_health(SERVING, timeout_s=15) < 15
    reply = server.rank(request)
    assert not reply.cold_user and len(reply.items) == 3
    scraped = server.scrape()
    assert scraped["tailrank_online_store_up"] == 1
    assert scraped["tailrank_online_store_probe_failures_total"] >= 3
    assert server.proc.poll() is None
    text = server.log_path.read_text()
    assert "event=online_store_unreachable" in text and "event=online_store_up" in text
    assert "event=online_store_reconnected" in text


# --- the event log's PostgreSQL restarted under load -----------------------------------
def test_postgres_event_log_restart_under_load_loses_no_acknowledged_row(
    start_server, private_postgres: PgCluster, cands: list[str]
) -> None:
    """PostgreSQL stopped for a second and started again while impressions are written:
    Rank never fails (the online store is another store), the writer retries, and after
    SIGTERM the table holds exactly the items of every OK response."""
    url = private_postgres.create_database(f"events_{uuid.uuid4().hex[:8]}")
    # the queue must hold every row served while the writer waits: (outage + its back-off,
    # up to 2 s) x rows/s; 50 000 rows is ~20 s of this load (docs/RELIABILITY.md)
    server = start_server("--event-log-url", url, "--event-queue-size", "50000")
    request = ranking_pb2.RankRequest(user_id="u-restart", candidate_ids=cands, top_k=3)
    with Load(server, request) as load:
        time.sleep(1.0)
        private_postgres.stop("fast")
        time.sleep(1.0)
        private_postgres.start()
        time.sleep(1.0)
    scraped = server.scrape()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0
    assert load.errors == [] and load.ok > 0
    assert scraped["tailrank_eventlog_write_errors_total"] > 0  # the restart was seen
    assert scraped["tailrank_eventlog_rows_dropped_total"] == 0
    assert count_rows(url, "impressions") == load.items_served
    print(f"drill: pg restart: {load.ok} calls OK, {load.items_served} rows stored, "
          f"{scraped['tailrank_eventlog_write_errors_total']:.0f} write errors")  # fmt: skip


# --- kill -9 under load ------------------------------------------------------------------
def test_kill_9_under_load_loses_at_most_the_queue(
    start_server, tmp_path: Path, cands: list[str]
) -> None:
    """SIGKILL while impressions flow: no flush. What the event log holds is a subset of
    what was served, and what is missing is at most one queue plus the batch in flight."""
    db = tmp_path / "events.db"
    server = start_server("--event-log-url", f"sqlite:///{db}", "--event-queue-size", str(QUEUE))
    request = ranking_pb2.RankRequest(user_id="u-kill", candidate_ids=cands, top_k=3)
    with Load(server, request) as load:
        time.sleep(1.5)
        assert server.scrape()["tailrank_eventlog_rows_dropped_total"] == 0  # the queue keeps up
        server.proc.send_signal(signal.SIGKILL)
        assert server.proc.wait(timeout=10) == -signal.SIGKILL
        time.sleep(0.3)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT count(*) FROM impressions").fetchone()[0]
        ids = {r[0] for r in conn.execute("SELECT DISTINCT user_id FROM impressions")}
    assert load.ok > 0 and ids <= {"u-kill"}
    assert 0 <= load.items_served - rows <= QUEUE + BATCH
    print(f"drill: kill -9: {load.items_served} rows served, {rows} stored")
    assert set(load.errors) <= {grpc.StatusCode.UNAVAILABLE}  # after the kill only


# --- the event log's disk full; its files read-only ----------------------------------------
def test_event_log_disk_full_rank_serves_and_drops_are_counted(
    start_server, small_disk: Path, cands: list[str]
) -> None:
    """The event log's file system fills up (a 4 MiB tmpfs, filled by another file): Rank
    answers every call, the writer retries, rows past the queue are dropped and counted;
    space freed: the queue is written. Stored + counted as dropped = served, exactly."""
    url = f"sqlite:///{small_disk / 'events.db'}"
    server = start_server("--event-log-url", url, "--event-queue-size", str(QUEUE))
    request = ranking_pb2.RankRequest(user_id="u-full", candidate_ids=cands, top_k=3)
    filler = small_disk / "filler"
    with Load(server, request) as load:
        time.sleep(0.5)
        with open(filler, "wb", buffering=0) as out, pytest.raises(OSError, match="No space"):
            while True:  # unbuffered: nothing left to flush (and fail) at close
                out.write(b"\0" * 65536)
        time.sleep(2.0)
        full = server.scrape()
        filler.unlink()
        time.sleep(1.0)
    deadline = time.monotonic() + 10
    while (scraped := server.scrape())["tailrank_eventlog_queue_depth"] > 0:
        assert time.monotonic() < deadline, "the queue was not written once space was back"
        time.sleep(0.1)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0
    assert load.errors == [] and load.ok > 0  # Rank never failed
    assert full["tailrank_eventlog_write_errors_total"] > 0
    assert full["tailrank_eventlog_rows_dropped_total"] > 0
    dropped = scraped["tailrank_eventlog_rows_dropped_total"]
    assert count_rows(url, "impressions") + dropped == load.items_served
    assert "database or disk is full" in server.log_path.read_text()
    print(f"drill: disk full: {load.ok} calls OK, {load.items_served} rows served, "
          f"{dropped:.0f} dropped and counted")  # fmt: skip


def test_read_only_event_log_files_drop_counted_rows_then_recover(tmp_path: Path) -> None:
    """The SQLite file and its WAL turn immutable under a running EventLog (``chattr +i``
    on ext4; root ignores permission bits, and tmpfs ignores +i for a file already open):
    writes fail ("disk I/O error"), are retried like an outage, overflow is dropped and
    counted; writable again: the queue is written, nothing else lost. The -shm index is
    left alone: SQLite maps it into memory and a write to an immutable mapped page is
    SIGBUS, which kills the process (docs/RELIABILITY.md)."""
    from serving.eventlog import EventLog
    from tests.test_eventlog import metric, response

    folder = tmp_path / "events"
    url = f"sqlite:///{folder / 'events.db'}"
    log = EventLog(url, queue_size=100, batch_size=50, flush_interval_s=0.05,
                   retry_max_s=0.1)  # fmt: skip
    try:
        assert all(log.log_impressions(response(f"r{k}", 10)) for k in range(5))
        deadline = time.monotonic() + 10
        while log.written < 50:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        frozen = [str(folder / "events.db"), str(folder / "events.db-wal")]
        done = subprocess.run(["chattr", "+i", *frozen], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"chattr +i needs root on ext4: {done.stderr.strip()}")
        dropped_before = metric("tailrank_eventlog_rows_dropped_total")
        try:
            accepted = 0
            for k in range(30):
                accepted += log.log_impressions(response(f"ro{k}", 10))
                time.sleep(0.01)
            time.sleep(0.3)
            assert log.written == 50  # nothing got through
        finally:
            subprocess.run(["chattr", "-i", *frozen], check=True)
        # held: the queue (100 rows) and the batch being retried (50): the rest counted
        assert 10 <= accepted <= 15 and log.dropped == 300 - 10 * accepted
        assert metric("tailrank_eventlog_rows_dropped_total") - dropped_before == log.dropped
    finally:
        log.close(timeout_s=10)
    assert count_rows(url, "impressions") == 50 + 10 * accepted == log.written
