"""The server as deployed: ``python -m serving --processes N`` run as a subprocess.

Part of ``python -m benchmarks.serving`` (which builds the setup and the calls):

- single vs multi-process: two real servers, ``--processes 1`` and ``--processes N``,
  started side by side (no event log, WARNING logs, the default ``--workers`` and
  ``--max-in-flight`` unless ``--server-workers`` says otherwise) and driven in alternation by the
  closed-loop load generator of ``benchmarks.load`` (8 calls in flight over 8
  connections, since the kernel gives each connection to one worker); medians of
  ``--repeats`` runs and the median of the per-pair ratios;
- overload: an open-loop load at twice the multi-process server's measured rate, for
  ``--overload-s`` seconds: the accepted calls' p50/p99 and the share refused
  (RESOURCE_EXHAUSTED past ``--max-in-flight``).

Every row gives the load generator's CPU (its process CPU time over wall time, in cores):
on a 2-core machine it competes with the servers.
"""

from __future__ import annotations

import argparse
import logging
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from serving.config import ServerConfig

log = logging.getLogger("benchmarks.processes")
ROOT = Path(__file__).resolve().parents[1]
IN_FLIGHT = 8


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def metric_sum(metrics_port: int, name: str) -> float:
    """Sum of the series of metric ``name`` (every label set; 0 while /metrics is not up)."""
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    )


def processes_up(metrics_port: int) -> float:
    """Sum of ``tailrank_process_up`` over the processes (0 while /metrics is not up)."""
    return metric_sum(metrics_port, "tailrank_process_up")


def launch(
    repo: Path,
    model: Path,
    fs_yaml: Path | None,
    processes: int,
    args: argparse.Namespace,
    event_log_url: str | None = None,
    log_level: str = "WARNING",
) -> tuple[subprocess.Popen, str, int]:
    """``python -m serving`` on a free port, not waited for: (process, target, metrics port).
    No event log unless ``event_log_url`` names one."""
    port, metrics_port = free_port(), free_port()
    argv = [sys.executable, "-m", "serving", "--repo", str(repo), "--model", str(model),
            "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
            "--processes", str(processes), "--workers", str(args.server_workers),
            "--ort-threads", str(args.ort_threads), "--log-level", log_level,
            "--grace-s", "5"]  # fmt: skip
    argv += ["--fs-yaml", str(fs_yaml)] if fs_yaml else []
    argv += ["--event-log-url", event_log_url] if event_log_url else ["--no-event-log"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL)
    return proc, f"127.0.0.1:{port}", metrics_port


def wait_up(
    proc: subprocess.Popen,
    metrics_port: int,
    processes: int,
    timeout_s: float = 300,
    poll_s: float = 0.5,
) -> None:
    """Return once every process is SERVING (its /metrics says so, polled every
    ``poll_s``); kill and raise if the server exits or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while processes_up(metrics_port) < processes:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"python -m serving --processes {processes} did not start")
        time.sleep(poll_s)


def start(
    repo: Path, model: Path, fs_yaml: Path | None, processes: int, args: argparse.Namespace
) -> tuple[subprocess.Popen, str]:
    """``python -m serving`` on a free port; returns once every process is SERVING."""
    proc, target, metrics_port = launch(repo, model, fs_yaml, processes, args)
    wait_up(proc, metrics_port, processes)
    return proc, target


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def summary(runs: list[dict]) -> dict[str, float]:
    return {
        "rps": statistics.median(len(r["latencies"]) / r["wall"] for r in runs),
        "p50_ms": statistics.median(np.percentile(r["latencies"], 50) * 1e3 for r in runs),
        "p99_ms": statistics.median(np.percentile(r["latencies"], 99) * 1e3 for r in runs),
        "client_cpu": statistics.median(r["client_cpu"] for r in runs),
    }


def compare(args: argparse.Namespace, repo: Path, model: Path, calls: list) -> list[str]:
    """Table lines: single vs multi-process at 8 in flight, then the overload row."""
    from benchmarks.load import drive, open_loop, percentiles_ms

    counts = (1, args.processes)
    servers = {n: start(repo, model, args.fs_yaml, n, args) for n in counts}
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    try:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            for repeat in range(args.repeats):  # alternate: a drifting load hits both alike
                for n in counts if repeat % 2 == 0 else counts[::-1]:
                    target = servers[n][1]
                    runs[n].append(pool.submit(drive, target, calls, IN_FLIGHT, 8).result())
                    log.info("processes %d: %.1f requests/s", n, len(runs[n][-1]["latencies"])
                             / runs[n][-1]["wall"])  # fmt: skip
            stop(servers[1][0])
            saturation = summary(runs[args.processes])["rps"]
            over = pool.submit(
                open_loop, servers[args.processes][1], calls, 2 * saturation, args.overload_s, 8
            ).result()
    finally:
        for proc, _ in servers.values():
            if proc.poll() is None:
                stop(proc)
    rows = {n: summary(runs[n]) for n in counts}
    ratios = [
        (len(b["latencies"]) / b["wall"]) / (len(a["latencies"]) / a["wall"])
        for a, b in zip(runs[1], runs[args.processes], strict=True)
    ]
    limit = ServerConfig(workers=args.server_workers).in_flight_limit
    lines = [
        "",
        f"Deployment: python -m serving subprocesses, {IN_FLIGHT} in flight over 8 "
        f"connections, {len(calls)} calls per run, median of {args.repeats} alternating runs",
        "| processes | requests/s | p50 ms | p99 ms | load generator CPU (cores) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, r in rows.items():
        lines.append(
            f"| {n} | {r['rps']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['client_cpu']:.2f} |"
        )
    lines.append(
        f"requests/s {args.processes} processes / 1: {statistics.median(ratios):.2f}x "
        f"(per pair: {', '.join(f'{x:.2f}' for x in ratios)})"
    )
    codes, sent = over["codes"], over["sent"]
    refused = codes.get("RESOURCE_EXHAUSTED", 0)
    other = sent - refused - codes.get("OK", 0)
    lat = percentiles_ms(over["latencies"])
    lines += [
        "",
        f"Overload: open loop at 2x the {args.processes}-process rate ({saturation:.0f}/s) for "
        f"{args.overload_s:.0f} s, in-flight limit {limit} per process ({args.server_workers} "
        "threads), 5 s deadline",
        "| offered/s | sent/s | accepted | refused (RESOURCE_EXHAUSTED) | other errors "
        "| accepted p50 ms | accepted p99 ms | load generator CPU (cores) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {2 * saturation:.0f} | {over['rate']:.0f} | {codes.get('OK', 0)} "
        f"| {refused} ({refused / sent:.1%}) | {other} ({other / sent:.1%}) "
        f"| {lat['p50_ms']:.1f} | {lat['p99_ms']:.1f} | {over['client_cpu']:.2f} |",
    ]
    if other:
        lines.append(f"other codes: { {k: v for k, v in codes.items() if k != 'OK'} }")
    return lines
