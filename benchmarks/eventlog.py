"""Event-log benchmark: impression rows written per second, and the hot-path cost.

    python -m benchmarks.eventlog                       # SQLite and PostgreSQL
    python -m benchmarks.eventlog --rows 50000 --batch-sizes 100 500 2000 --repeats 5
    python -m benchmarks.eventlog --no-postgres
    python -m benchmarks.eventlog --serving [--repo feature_repo --model artifacts/NAME \\
        --fs-yaml feature_repo/data/NAME/feature_store.yaml]

For each backend and batch size, logs ``--rows`` impressions as responses of
``--top-k`` rows from one thread (as fast as it can) and times from the first
``log_impressions`` call until ``close()`` has written the last row; the queue is sized
to hold them all, so nothing is dropped and the figure is the writer's throughput.
Also times ``log_impressions`` itself (what a Rank call pays). Prints the median of
``--repeats`` runs. PostgreSQL runs in a throw-away database on ``--pg-admin-url``'s
server (skipped with a note when it is unreachable).

``--serving`` measures what logging costs the server: two real servers in this process
(event log off, and on with a SQLite file), driven in turn by the load generator of
``benchmarks.load`` (a separate process, Rank with ``--candidates`` candidates and
top_k 20). Each repeat is a pair of runs, off then on, or on then off every other
repeat (so a drifting machine load hits both alike), and each pair gives one on/off
ratio of requests per second and of server CPU per request; the table prints the median
ratio over the pairs and its range. It also prints what the writer thread itself spent
(its own CPU time, ``EventLog.writer_cpu_s``) per request: the cost logging adds,
measured directly rather than as a small difference of two noisy throughputs. With
``--pin`` (the default on a machine of 2 or more CPUs) the servers run on the first CPU
and the load generator on the others, as a client on another host would: on a shared
2-core box the client's own CPU otherwise competes with the servers, and the ratio
mixes the client's cost into the server's.
Without ``--repo``/``--model`` it builds ``benchmarks.synthetic``'s setup.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from serving.eventlog import EventLog, Impression
from serving.eventschema import metadata

log = logging.getLogger("benchmarks.eventlog")

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextmanager
def sqlite_url() -> Iterator[str]:
    """A SQLite file in a temp folder."""
    with tempfile.TemporaryDirectory(prefix="tailrank-bench-") as tmp:
        yield f"sqlite:///{Path(tmp) / 'events.db'}"


@contextmanager
def postgres_url(admin_url: str) -> Iterator[str]:
    """A throw-away PostgreSQL database, dropped afterwards."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"tailrank_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def responses(n_rows: int, top_k: int) -> list[list[Impression]]:
    """``n_rows`` impressions in responses of ``top_k`` (built before timing)."""
    now = datetime.now(UTC)
    return [
        [
            Impression(
                f"req-{r}",
                f"user-{r % 997}",
                f"item-{(r * 7 + p) % 5000}",
                p + 1,
                0.5,
                0.25,
                p % 3 == 0,
                "bench-v1",
                now,
            )  # fmt: skip
            for p in range(top_k)
        ]
        for r in range(n_rows // top_k)
    ]


def reset(url: str) -> None:
    """Drop the event tables so every run starts from empty ones."""
    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    engine.dispose()


def one_run(url: str, batch: list[list[Impression]], batch_size: int) -> tuple[float, float]:
    """(rows written per second, median microseconds per log_impressions call)."""
    reset(url)
    n_rows = sum(len(r) for r in batch)
    event_log = EventLog(url, queue_size=n_rows, batch_size=batch_size, flush_interval_s=0.05)
    calls = []
    start = time.perf_counter()
    for rows in batch:
        t = time.perf_counter()
        event_log.log_impressions(rows)
        calls.append(time.perf_counter() - t)
    event_log.close(timeout_s=600)
    elapsed = time.perf_counter() - start
    if event_log.written != n_rows:
        raise RuntimeError(f"wrote {event_log.written} of {n_rows} rows")
    return n_rows / elapsed, statistics.median(calls) * 1e6


def bench_backend(name: str, url: str, args: argparse.Namespace) -> list[str]:
    """Table lines for one backend over all batch sizes."""
    batch = responses(args.rows, args.top_k)
    lines = []
    for batch_size in args.batch_sizes:
        runs = [one_run(url, batch, batch_size) for _ in range(args.repeats)]
        rate = statistics.median(r[0] for r in runs)
        call_us = statistics.median(r[1] for r in runs)
        lines.append(f"| {name} | {batch_size} | {args.rows} | {rate:,.0f} | {call_us:.1f} |")
        log.info("%s batch %d: %.0f rows/s", name, batch_size, rate)
    return lines


def start_server(
    repo: Path, fs_yaml: Path | None, model: Path, event_log_url: str | None, workers: int
):
    """A real ranking server on a free loopback port: (server, servicer, target)."""
    from serving.__main__ import build_servicer
    from serving.config import ServerConfig
    from serving.server import create_server

    config = ServerConfig(
        repo=repo, fs_yaml=fs_yaml, model=model, host="127.0.0.1", port=0, ort_threads=1,
        workers=workers, event_log_url=event_log_url,
    )  # fmt: skip
    servicer = build_servicer(config)
    servicer.start()
    server, port = create_server(config, servicer)
    return server, servicer, f"127.0.0.1:{port}"


def one_serving_run(pool, target: str, calls: list, level: int) -> tuple[float, float, int]:
    """(requests per second, server CPU ms per request, requests) of one load run.

    CPU is this process's CPU time (the servers; the client runs in another process),
    read after a pause that lets the writer flush, so logging's full cost is counted.
    """
    from benchmarks.load import drive

    cpu = time.process_time()
    run = pool.submit(drive, target, calls, level).result()
    time.sleep(0.5)  # > flush_interval_s: the writer has written this run's rows
    n = len(run["latencies"])
    return n / run["wall"], (time.process_time() - cpu) * 1e3 / (n + 3), n + 3  # +3 warm-up


def paired_runs(pool, servers: dict, calls: list, level: int, repeats: int) -> dict:
    """`repeats` off/on pairs at one concurrency: per-pair ratios and the writer's CPU."""
    event_log = servers["on"][1].event_log
    ratios: dict[str, list[float]] = {"rps": [], "cpu": []}
    rps: dict[str, list[float]] = {"off": [], "on": []}
    writer_ms, requests = 0.0, 0
    for repeat in range(repeats):
        pair = {}
        for mode in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
            before = event_log.writer_cpu_s
            pair[mode] = one_serving_run(pool, servers[mode][2], calls, level)
            if mode == "on":
                writer_ms += (event_log.writer_cpu_s - before) * 1e3
                requests += pair[mode][2]
        ratios["rps"].append(pair["on"][0] / pair["off"][0])
        ratios["cpu"].append(pair["on"][1] / pair["off"][1])
        for mode in pair:
            rps[mode].append(pair[mode][0])
    return {
        "rps": {m: statistics.median(v) for m, v in rps.items()},
        "ratios": ratios,
        "writer_ms_per_request": writer_ms / max(requests, 1),
    }


def bench_serving(args: argparse.Namespace, repo: Path, model: Path, tmp: Path) -> list[str]:
    """Table lines: Rank throughput and server CPU with the event log off and on."""
    from multiprocessing import get_context

    from benchmarks.load import features_dir, make_calls

    calls = make_calls(model, features_dir(repo, args.fs_yaml), args.requests, args.candidates)
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2
    if pin:  # before the servers start: their threads inherit this thread's CPU set
        os.sched_setaffinity(0, cpus[:1])
    log_url = args.log_url or f"sqlite:///{tmp / 'events.db'}"
    servers = {
        "off": start_server(repo, args.fs_yaml, model, None, args.workers),
        "on": start_server(repo, args.fs_yaml, model, log_url, args.workers),
    }
    where = f"servers on CPU {cpus[0]}, client on {cpus[1:]}" if pin else "not pinned"
    lines = [
        where,
        "| concurrency | rps off | rps on | rps on/off, median [range] | CPU/req on/off, "
        "median [range] | writer CPU ms/req |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    client = {"initializer": os.sched_setaffinity, "initargs": (0, cpus[1:])} if pin else {}
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), **client) as pool:
        for level in args.concurrency:
            got = paired_runs(pool, servers, calls, level, args.repeats)
            r, c = got["ratios"]["rps"], got["ratios"]["cpu"]
            lines.append(
                f"| {level} | {got['rps']['off']:.1f} | {got['rps']['on']:.1f} "
                f"| {statistics.median(r):.3f} [{min(r):.3f}-{max(r):.3f}] "
                f"| {statistics.median(c):.3f} [{min(c):.3f}-{max(c):.3f}] "
                f"| {got['writer_ms_per_request']:.3f} |"
            )
            log.info("concurrency %d: %s", level, lines[-1])
    for server, servicer, _ in servers.values():
        server.stop(0).wait()
        if servicer.event_log is not None:
            servicer.event_log.close()
            written, dropped = servicer.event_log.written, servicer.event_log.dropped
            lines.append(f"event log: {written} rows written, {dropped} dropped")
    return lines


def serving_main(args: argparse.Namespace) -> list[str]:
    """Run ``bench_serving`` on the given artifacts or on a synthetic setup."""
    from benchmarks.synthetic import build_synthetic

    with tempfile.TemporaryDirectory(prefix="tailrank-bench-") as tmp_name:
        tmp = Path(tmp_name)
        repo, model = args.repo, args.model
        if repo is None or model is None:
            log.info("building a synthetic setup (%d items, %d users)", args.items, args.users)
            repo, model = build_synthetic(tmp / "setup", args.items, args.users)
            args.fs_yaml = None
        header = f"Rank, {args.candidates} candidates, top_k 20, model {model.name}"
        return [header, *bench_serving(args, repo, model, tmp)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.eventlog", description=__doc__)
    p.add_argument("--rows", type=int, default=20000, help="impressions per run (default 20000)")
    p.add_argument("--top-k", type=int, default=10, help="rows per response (default 10)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[50, 500, 2000])
    p.add_argument("--repeats", type=int, default=3, help="runs (or off/on pairs) per setting")
    p.add_argument("--pg-admin-url", default=PG_ADMIN_URL, help="server for a temp database")
    p.add_argument("--no-postgres", action="store_true", help="SQLite only")
    s = p.add_argument_group("--serving: throughput with logging off vs on")
    s.add_argument("--serving", action="store_true", help="measure serving instead")
    s.add_argument("--repo", type=Path, help="materialized Feast repo (default: synthetic)")
    s.add_argument("--fs-yaml", type=Path, help="the data set's Feast config (make's: "
                   "feature_repo/data/<name>/feature_store.yaml)")  # fmt: skip
    s.add_argument("--model", type=Path, help="model run dir (default: synthetic)")
    s.add_argument("--items", type=int, default=1682, help="synthetic catalogue size")
    s.add_argument("--users", type=int, default=943, help="synthetic users")
    s.add_argument("--candidates", type=int, default=200, help="candidates per Rank call")
    s.add_argument("--requests", type=int, default=600, help="Rank calls per run")
    s.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="client threads")
    s.add_argument("--workers", type=int, default=16, help="server worker threads")
    s.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="servers on the first CPU, load generator on the others (default on)",
    )
    s.add_argument(
        "--log-url", help="event store of the logging server (default: a temp SQLite file)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("serving").setLevel(logging.ERROR)
    if args.serving:
        print("\n".join(serving_main(args)))
        return 0
    lines = ["| backend | batch size | rows | rows written/s | log_impressions µs/call |",
             "| --- | --- | --- | --- | --- |"]  # fmt: skip
    with sqlite_url() as url:
        lines += bench_backend("SQLite (WAL)", url, args)
    if not args.no_postgres:
        try:
            with postgres_url(args.pg_admin_url) as url:
                lines += bench_backend("PostgreSQL", url, args)
        except sa.exc.OperationalError as exc:
            lines.append(f"PostgreSQL skipped: {exc.orig}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
