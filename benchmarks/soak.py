"""Soak: hold 80% of the server's peak Rank throughput for a long time; errors, p99 over
time and the server's memory growth.

    python -m benchmarks.soak --duration 600 --json artifacts/soak/soak.json   # the record
    python -m benchmarks.soak --duration 120                                   # a short check
    python -m benchmarks.soak --target 127.0.0.1:50051 --pid 4242 --duration 600

1. The server: ``python -m serving --processes N`` started as deployed (``benchmarks.
   processes``; N = the cores by default) on the setup ``benchmarks.serving`` uses (make's
   MovieLens-100K artifacts when built, else its synthetic shop), with its SQLite event
   log in a temporary folder; or a running one (``--target``, and ``--pid`` for memory).
2. Peak: the closed-loop generator of ``benchmarks.load`` (``--in-flight`` calls over as
   many connections, ``--peak-requests`` calls): requests/s.
3. Soak: ``--load`` (0.8) x peak, open loop (paced, whatever the answers) for
   ``--duration`` s over ``--in-flight`` connections, 5 s deadline. Every ``--interval``
   s one row: calls sent, answered, errors by status code, p50/p99 of the answered calls
   (by the time they were answered), the server's RSS (its process and children, from
   /proc) and, with several processes, their PSS (shared pages counted once).
4. The end: total errors, RSS growth = the last row's RSS over the first's (the first
   interval is the warm-up: caches, allocator arenas, the event-log queue fill up), the
   event log's rows written and dropped, health still SERVING.

Calls are Rank with ``--candidates`` candidates for users with full histories, top_k 20
(``benchmarks.load.make_calls``). Prints a markdown table; ``--json`` writes every figure.
Exit 1 when a call failed or the server died.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tqdm import tqdm

from benchmarks import processes
from benchmarks.load import drive, features_dir, make_calls, stubs
from benchmarks.serving import add_setup_args, setup
from serving.config import ServerConfig

log = logging.getLogger("benchmarks.soak")
DEADLINE_S = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=600, help="seconds of soak (600: the record)")
    p.add_argument("--interval", type=float, default=30, help="seconds per reported row")
    p.add_argument("--load", type=float, default=0.8, help="share of the peak rate to hold")
    p.add_argument("--in-flight", type=int, default=8, help="peak: calls in flight; connections")
    p.add_argument("--peak-requests", type=int, default=3000, help="calls of the peak run")
    p.add_argument("--candidates", type=int, default=200, help="candidates per Rank call")
    p.add_argument("--calls", type=int, default=5000, help="distinct Rank calls, sent in turn")
    p.add_argument("--target", help="soak a running server at HOST:PORT (default: start one)")
    p.add_argument("--pid", type=int, help="with --target: the server's pid, for its memory")
    p.add_argument(
        "--processes", type=int, default=len(os.sched_getaffinity(0)),
        help="--processes of the server started (default: the cores)",
    )  # fmt: skip
    p.add_argument("--server-workers", type=int, default=ServerConfig().workers,
                   help="--workers of the server started")  # fmt: skip
    p.add_argument("--ort-threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--no-event-log", action="store_true", help="start the server without one")
    p.add_argument("--json", type=Path, help="write every figure here")
    add_setup_args(p)
    return p.parse_args(argv)


# --- the server's memory -----------------------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (children of every thread, from /proc)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:  # the thread or process ended meanwhile
                continue
    return out


def memory_mb(pid: int) -> dict[str, float]:
    """RSS and PSS (MB) summed over ``pid`` and its descendants."""
    total = {"Rss": 0.0, "Pss": 0.0}
    for p in process_tree(pid):
        try:
            lines = Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            key, _, value = line.partition(":")
            if key in total:
                total[key] += int(value.split()[0]) / 1024
    return {"rss_mb": round(total["Rss"], 1), "pss_mb": round(total["Pss"], 1)}


# --- the open loop ----------------------------------------------------------------------------
class Window:
    """What was answered since the last row (filled by gRPC's callback threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.pending = 0

    def answered(self, sent: float, future: grpc.Future) -> None:
        code = future.code()
        with self.lock:
            self.codes[code.name] += 1
            self.pending -= 1
            if code is grpc.StatusCode.OK:
                self.latencies.append(time.perf_counter() - sent)

    def take(self) -> tuple[Counter[str], list[float]]:
        with self.lock:
            codes, lat = self.codes, self.latencies
            self.codes, self.latencies = Counter(), []
        return codes, lat


def row(t_s: float, sent: int, codes: Counter[str], lat: list[float], pid: int | None) -> dict:
    ms = np.asarray(lat) * 1e3
    out = {
        "t_s": round(t_s, 1), "sent": sent, "answered": sum(codes.values()),
        "errors": {k: v for k, v in codes.items() if k != "OK"},
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
    }  # fmt: skip
    return out | (memory_mb(pid) if pid else {})


def soak(target: str, requests: list, rate: float, args: argparse.Namespace, pid: int | None):
    """Send ``requests`` in turn at ``rate``/s for ``args.duration`` s; one row per interval."""
    clients, window, rows = stubs(target, args.in_flight), Window(), []
    start = time.perf_counter()
    end, next_row, sent, k = start + args.duration, start + args.interval, 0, 0
    cpu = time.process_time()
    with tqdm(total=round(args.duration), desc="soak", unit="s") as bar:
        while (due := start + k / rate) < end:
            now = time.perf_counter()
            if now >= next_row and next_row < end:  # the last row also waits for the answers
                rows.append(row(next_row - start, sent, *window.take(), pid))
                log.info("%s", rows[-1])
                bar.set_postfix(p99_ms=rows[-1]["p99_ms"], errors=sum(rows[-1]["errors"].values()))
                next_row, sent = next_row + args.interval, 0
            bar.update(max(0, int(now - start) - bar.n))
            if due > now:
                time.sleep(due - now)
            with window.lock:
                window.pending += 1
            at = time.perf_counter()
            future = clients[k % len(clients)].Rank.future(requests[k % len(requests)],
                                                           timeout=DEADLINE_S)  # fmt: skip
            future.add_done_callback(lambda f, at=at: window.answered(at, f))
            sent, k = sent + 1, k + 1
        sending = time.perf_counter() - start
        while window.pending > 0 and time.perf_counter() < end + 2 * DEADLINE_S:
            time.sleep(0.05)
        rows.append(row(time.perf_counter() - start, sent, *window.take(), pid))
        log.info("%s", rows[-1])
        bar.update(bar.total - bar.n)
    wall = time.perf_counter() - start
    return rows, {"sent": k, "sent_per_s": round(k / sending, 1),
                  "load_generator_cpu": round((time.process_time() - cpu) / wall, 2)}  # fmt: skip


# --- the run ---------------------------------------------------------------------------------
def serving(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def summarize(rows: list[dict], sent: dict, peak: float, rate: float, pid: int | None) -> dict:
    errors: Counter[str] = Counter()
    for r in rows:
        errors.update(r["errors"])
    p99s = [r["p99_ms"] for r in rows if r["p99_ms"] is not None]
    out = {
        "peak_rps": round(peak, 1), "rate": round(rate, 1), **sent,
        "answered": sum(r["answered"] for r in rows), "errors": sum(errors.values()),
        "errors_by_code": dict(errors), "p50_ms_median": round(statistics.median(
            r["p50_ms"] for r in rows if r["p50_ms"] is not None), 2),
        "p99_ms_median": round(statistics.median(p99s), 2), "p99_ms_max": max(p99s),
    }  # fmt: skip
    if pid and len(rows) >= 2:  # the first row's memory is after the warm-up interval
        for key in ("rss_mb", "pss_mb"):
            out[f"{key[:3]}_growth_pct"] = round(100 * (rows[-1][key] / rows[0][key] - 1), 2)
    return out


def print_report(figures: dict) -> None:
    s, memory = figures["summary"], "rss_mb" in figures["intervals"][0]
    print(f"Soak: {s['rate']:.0f} calls/s offered ({figures['load']:.0%} of the peak "
          f"{s['peak_rps']:.0f}/s) for {figures['duration_s']:.0f} s, sent {s['sent_per_s']}/s; "
          f"{figures['processes']} server process(es); load average {figures['loadavg_start']} "
          f"at the start, {figures['loadavg_end']} at the end; load generator "
          f"{s['load_generator_cpu']} of a core")  # fmt: skip
    print("| t (s) | sent | answered | errors | p50 ms | p99 ms |"
          + (" RSS MB | PSS MB |" if memory else ""))  # fmt: skip
    print("| ---: | ---: | ---: | --- | ---: | ---: |" + (" ---: | ---: |" if memory else ""))
    for r in figures["intervals"]:
        errors = ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0"
        mem = f" {r['rss_mb']} | {r['pss_mb']} |" if memory else ""
        print(f"| {r['t_s']} | {r['sent']} | {r['answered']} | {errors} | {r['p50_ms']} "
              f"| {r['p99_ms']} |{mem}")  # fmt: skip
    growth = (f"RSS growth {s['rss_growth_pct']}% (PSS {s['pss_growth_pct']}%), first row to "
              "the last" if "rss_growth_pct" in s else "RSS not measured (no --pid)")  # fmt: skip
    print(f"errors {s['errors']} {s['errors_by_code'] or ''}; p99 median {s['p99_ms_median']} "
          f"ms, max {s['p99_ms_max']} ms; {growth}; event log: "
          f"{figures['eventlog']}; SERVING at the end: {figures['serving_at_end']}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    loadavg = lambda: ", ".join(f"{x:.1f}" for x in os.getloadavg())  # noqa: E731
    figures: dict = {"argv": sys.argv[1:] if argv is None else argv, "loadavg_start": loadavg(),
                     "duration_s": args.duration, "load": args.load}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tailrank-soak-") as tmp:
        repo, model = setup(args, Path(tmp))
        calls = make_calls(model, features_dir(repo, args.fs_yaml), args.calls, args.candidates)
        proc, target, pid, metrics_port = None, args.target, args.pid, None
        if target is None:
            url = None if args.no_event_log else f"sqlite:///{Path(tmp) / 'events.db'}"
            proc, target, metrics_port = processes.launch(
                repo, model, args.fs_yaml, args.processes, args, event_log_url=url
            )
            processes.wait_up(proc, metrics_port, args.processes)
            pid = proc.pid
        figures |= {"model": str(model), "processes": args.processes if proc else None}
        try:
            peak_run = drive(target, calls[: args.peak_requests], args.in_flight, args.in_flight)
            peak = len(peak_run["latencies"]) / peak_run["wall"]
            log.info("peak: %.1f requests/s at %d in flight", peak, args.in_flight)
            from serving.api.tailrank.v1 import ranking_pb2

            requests = [ranking_pb2.RankRequest(user_id=u, candidate_ids=c, top_k=20)
                        for u, c in calls]  # fmt: skip
            rows, sent = soak(target, requests, args.load * peak, args, pid)
            figures["serving_at_end"] = serving(target) and (proc is None or proc.poll() is None)
            figures["eventlog"] = {
                key: processes.metric_sum(metrics_port, f"tailrank_eventlog_rows_{key}_total")
                for key in ("written", "dropped")
            } if metrics_port and not args.no_event_log else "not measured"  # fmt: skip
        finally:
            if proc is not None:
                processes.stop(proc)
    figures |= {"intervals": rows, "summary": summarize(rows, sent, peak, args.load * peak, pid),
                "loadavg_end": loadavg()}  # fmt: skip
    print_report(figures)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if figures["summary"]["errors"] == 0 and figures["serving_at_end"] else 1


if __name__ == "__main__":
    sys.exit(main())
