"""Property-based fuzz of the ranking server over gRPC: every field of every RPC.

    python -m benchmarks.fuzz --cases 10000       # starts python -m serving on the setup
    python -m benchmarks.fuzz --target 127.0.0.1:50051 --event-log-url sqlite:///data/events.db \\
        --repo feature_repo --fs-yaml feature_repo/data/movielens-100k/feature_store.yaml

Hypothesis draws Rank, Feedback and UpsertItems requests (``benchmarks.fuzz_cases``:
well-formed and hostile values of every field) and each is sent to a real server,
``python -m serving`` with an SQLite event log (the MovieLens-100K artifacts when built,
else the synthetic setup of ``benchmarks.serving``, given a features summary naming the
default sentence encoder so that it can upsert), and checked by ``Fuzzer.check``:

- a well-formed Rank is answered OK: every candidate of the store ranked (``top_k`` of
  them) and every other one listed unscored, scores finite and descending, the request
  id and tail weight echoed, explanations exactly when asked;
- a well-formed Feedback is answered OK, ``accepted`` = its events, and the event log
  holds exactly those rows, ids byte for byte (SQL-looking ones included);
- a well-formed UpsertItems is OK with the right created/updated counts, the items are
  in the event log's ``item_upserts`` in order, and a Rank of them right after ranks all;
- a bad request is INVALID_ARGUMENT with a message naming a wrong field, and stores
  nothing;
- a body off the schema is refused: INVALID_ARGUMENT for a string field that is not
  UTF-8, RESOURCE_EXHAUSTED (from gRPC itself) for one over the 4 MB receive limit;
- the process stays up: it is polled after every case, health is checked every
  ``--health-every`` cases and at the end.

Prints a markdown table (cases, status codes by kind of request, INTERNAL answers, time);
``--json`` writes it. Nothing is retried: the first failing case is printed. The test
suite runs the same check with a small budget (tests/test_fuzz_serving.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
import pandas as pd
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from tqdm import tqdm

from benchmarks.fuzz_cases import MALFORMED, OVERSIZE, Case, ItemColumns, all_cases
from benchmarks.synthetic import add_encoder_summary
from core import schema
from serving.api.tailrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.config import ServerConfig
from serving.eventschema import feedback, item_upserts
from serving.server import SERVICE_NAME

log = logging.getLogger("benchmarks.fuzz")
TIMEOUT_S = 30.0  # 1,000 unknown candidates are 1,000 Feast misses
OK, INVALID = grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT


class ServerDied(AssertionError):
    """The server process exited or stopped answering health: the fuzz cannot go on."""


def known_ids(features: Path) -> tuple[list[str], list[str]]:
    """(user ids, item ids) of the store's Parquet sources, sorted."""

    def read(file: str, col: str) -> list[str]:
        return sorted(pd.read_parquet(features / file, columns=[col])[col].astype(str).unique())

    return read(schema.USER_FEATURES_FILE, schema.USER_ID), read(
        schema.ITEM_FEATURES_FILE, schema.ITEM_ID
    )


def item_columns(features: Path) -> ItemColumns | None:
    """The columns UpsertItems takes, from the features step's summary beside the sources;
    None when there is none or it names no encoder graph (the server then refuses upserts)."""
    try:
        summary = json.loads((features / schema.FEATURES_SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    columns = summary.get("item_columns") or {}
    if not summary.get("encoder", {}).get("graph") or not columns.get("text"):
        return None
    return ItemColumns(tuple(columns["text"]), tuple(columns.get("numeric", ())))


def writable_copy(repo: Path, fs_yaml: Path | None, tmp: Path) -> tuple[Path, Path | None]:
    """A copy of the Feast repo (and its data) to serve from: Feedback and UpsertItems
    write to the online store, which must stay as it was built for the next run."""
    import shutil

    copy = Path(shutil.copytree(repo, tmp / "repo", symlinks=True))
    if fs_yaml is None:
        return copy, None
    if not fs_yaml.resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"--fs-yaml {fs_yaml} is outside --repo {repo}: cannot copy the store")
    return copy, copy / fs_yaml.resolve().relative_to(repo.resolve())


def kind(case: Case) -> str:
    if case.well_formed:
        return "well-formed"
    return "off-schema" if case.problems & {MALFORMED, OVERSIZE} else "bad"


class Fuzzer:
    """Sends Cases to the server at ``target`` and checks each answer (see the module doc).

    ``event_log_url``: the server's event store, read back after each write; ``items``:
    the item ids the store holds (upserted ones are added); ``proc``: the server process,
    polled after each case."""

    def __init__(self, target: str, event_log_url: str, items: list[str],
                 proc: subprocess.Popen | None = None) -> None:  # fmt: skip
        self.channel = grpc.insecure_channel(target)
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = ranking_pb2_grpc.RankingServiceStub(self.channel)
        # no serializer: the body is sent as given (a MALFORMED case is not a message)
        methods = ranking_pb2.DESCRIPTOR.services_by_name["RankingService"].methods
        self.raw = {m.name: self.channel.unary_unary(f"/{SERVICE_NAME}/{m.name}") for m in methods}
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self.engine = sa.create_engine(event_log_url)
        self.items, self.proc = set(items), proc
        self.codes: Counter[tuple[str, str, str]] = Counter()  # (method, kind, code) -> n
        self.failures: list[str] = []

    def close(self) -> None:
        self.channel.close()
        self.engine.dispose()

    # --- one case ------------------------------------------------------------------------
    def check(self, case: Case) -> list[str]:
        """Send ``case``; return what is wrong with the answer (empty: nothing)."""
        table = {"Feedback": feedback, "UpsertItems": item_upserts}.get(case.method)
        before = self._last_id(table) if table is not None else 0
        code, details, reply = self._send(case)
        self.codes[(case.method, kind(case), code.name)] += 1
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerDied(f"server exited ({self.proc.returncode}) on {describe(case)}")
        if case.well_formed:
            problems = [f"{code.name} to a well-formed {case.method}: {details}"]
            if code is OK:
                check = {"Rank": self._check_rank, "Feedback": self._check_feedback,
                         "UpsertItems": self._check_upsert}[case.method]  # fmt: skip
                problems = check(case.message, reply, before)
        elif kind(case) == "off-schema":  # gRPC refuses one over its receive limit itself
            want = INVALID if MALFORMED in case.problems else grpc.StatusCode.RESOURCE_EXHAUSTED
            problems = [] if code is want else [f"{code.name} to {sorted(case.problems)[0]}"]
        elif code is not INVALID or not any(field in details for field in case.problems):
            problems = [f"{code.name} {details!r}: wanted INVALID_ARGUMENT naming one of "
                        f"{sorted(case.problems)}"]  # fmt: skip
        else:
            problems = []
        if table is not None and code is not OK and self._last_id(table) != before:
            problems.append(f"a refused {case.method} stored rows")
        if problems:
            self.failures.append(f"{describe(case)}: {'; '.join(problems)}")
        return problems

    def _send(self, case: Case) -> tuple[grpc.StatusCode, str, object]:
        call = self.raw[case.method] if isinstance(case.message, bytes) else (
            getattr(self.stub, case.method))  # fmt: skip
        try:
            return OK, "", call(case.message, timeout=TIMEOUT_S)
        except grpc.RpcError as err:
            return err.code(), err.details() or "", None

    def _check_rank(self, request: ranking_pb2.RankRequest, reply, _: int = 0) -> list[str]:
        cands = list(request.candidate_ids)
        known = [c for c in cands if c in self.items]
        ranked = [it.item_id for it in reply.items]
        unscored = sorted(u.item_id for u in reply.unscored)
        want = len(known) if request.top_k == 0 else min(request.top_k, len(known))
        scores = [it.score for it in reply.items]
        problems = []
        if unscored != sorted(c for c in cands if c not in self.items):
            problems.append(f"unscored {unscored[:5]} is not the candidates the store lacks")
        if len(ranked) != want or len(set(ranked)) != want or not set(ranked) <= set(known):
            problems.append(f"{len(ranked)} items ranked, wanted {want} of the known candidates")
        if not all(map(math.isfinite, scores)) or scores != sorted(scores, reverse=True):
            problems.append(f"scores not finite and descending: {scores[:5]}")
        if not all(0.0 <= it.click_probability <= 1.0 for it in reply.items):
            problems.append("a click probability outside [0, 1]")
        if reply.request_id != (request.request_id or reply.request_id) or not reply.request_id:
            problems.append(f"request_id {reply.request_id!r} is not the caller's")
        if request.HasField("tail_weight") and reply.tail_weight != request.tail_weight:
            problems.append(f"tail_weight {reply.tail_weight} applied, {request.tail_weight} asked")
        if any(bool(it.explanation) != request.explain for it in reply.items):
            problems.append(f"explanations do not follow explain={request.explain}")
        return problems

    def _check_feedback(
        self, request: ranking_pb2.FeedbackRequest, reply, before: int
    ) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(feedback).where(feedback.c.id > before).order_by(feedback.c.id)
            ).all()
        sent = [(e.user_id, e.item_id, e.event_type, e.request_id or None) for e in request.events]
        stored = [(r.user_id, r.item_id, r.event_type, r.request_id) for r in rows]
        problems = []
        if reply.accepted != len(sent):
            problems.append(f"accepted {reply.accepted} of {len(sent)} events")
        if stored != sent:
            problems.append(f"event log rows differ from the events sent: {stored[:2]!r}")
        times = [(e.timestamp_ms, round(r.occurred_at.timestamp() * 1000))
                 for e, r in zip(request.events, rows, strict=False) if e.timestamp_ms]  # fmt: skip
        if any(sent_ms != stored_ms for sent_ms, stored_ms in times):
            problems.append(f"occurred_at differs from timestamp_ms: {times[:2]}")
        return problems

    def _check_upsert(self, request: ranking_pb2.UpsertItemsRequest, reply, before: int):
        """Counts right, the items logged in order, and ranked at once by this server."""
        ids = [item.item_id for item in request.items]
        new = sum(i not in self.items for i in ids)
        problems = []
        got, want = (reply.upserted, reply.created, reply.updated), (len(ids), new, len(ids) - new)
        if got != want:
            problems.append(f"upserted, created, updated: {got}, wanted {want}")
        query = sa.select(item_upserts.c.item_id).where(item_upserts.c.id > before)
        with self.engine.connect() as conn:
            logged = conn.execute(query.order_by(item_upserts.c.id)).scalars().all()
        if logged != ids:
            problems.append(f"item_upserts holds {logged[:3]!r}, not the items sent")
        self.items.update(ids)
        ranked = self.stub.Rank(ranking_pb2.RankRequest(user_id="fuzz", candidate_ids=ids),
                                timeout=TIMEOUT_S)  # fmt: skip
        if sorted(it.item_id for it in ranked.items) != sorted(ids):
            problems.append(f"upserted items not ranked at once: unscored {list(ranked.unscored)}")
        return problems

    def _last_id(self, table: sa.Table) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(table.c.id))).scalar() or 0

    def serving(self) -> bool:
        """grpc.health.v1 says SERVING (and the process, when known, is alive)."""
        if self.proc is not None and self.proc.poll() is not None:
            return False
        try:
            reply = self.health_stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def describe(case: Case, width: int = 300) -> str:
    text = repr(case.message) if isinstance(case.message, bytes) else str(case.message)
    text = " ".join(text.split())
    return f"{case.method}({text[:width]}{'...' if len(text) > width else ''})"


def fuzz(
    fuzzer: Fuzzer,
    strategy: st.SearchStrategy[Case],
    cases: int,
    *,
    seed: int | None = None,
    stop_on_failure: bool = True,
    health_every: int = 0,
    progress: tqdm | None = None,
) -> None:
    """Check ``cases`` requests drawn from ``strategy``. ``seed`` None: derandomized
    (the same requests every run). ``stop_on_failure``: raise AssertionError at the first
    failing case (after Hypothesis shrinks it); else count failures in ``fuzzer.failures``
    and go on. A dead server always stops the run (``ServerDied``)."""
    sent = 0

    @settings(max_examples=cases, deadline=None, database=None, derandomize=seed is None,
              suppress_health_check=list(HealthCheck), print_blob=False)  # fmt: skip
    @given(strategy)
    def one(case: Case) -> None:
        nonlocal sent
        problems = fuzzer.check(case)
        sent += 1
        if progress is not None:
            progress.update()
        if health_every and sent % health_every == 0 and not fuzzer.serving():
            raise ServerDied(f"health not SERVING after {sent} cases")
        if problems and stop_on_failure:
            raise AssertionError(f"{describe(case)}: {'; '.join(problems)}")

    (hypothesis_seed(seed)(one) if seed is not None else one)()


# --- the benchmark ---------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from benchmarks.serving import add_setup_args

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.fuzz",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cases", type=int, default=10_000, help="requests to draw and send")
    p.add_argument("--seed", type=int, default=0, help="Hypothesis seed (same seed, same cases)")
    p.add_argument("--target", help="fuzz a running server at HOST:PORT (default: start one)")
    p.add_argument("--event-log-url", help="with --target: that server's event store URL")
    p.add_argument("--processes", type=int, default=1, help="--processes of the server started")
    p.add_argument("--server-workers", type=int, default=ServerConfig().workers,
                   help="--workers of the server started")  # fmt: skip
    p.add_argument("--ort-threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--health-every", type=int, default=500, help="health check every N cases")
    p.add_argument("--stop-on-failure", action="store_true", help="stop at the first failure")
    p.add_argument("--json", type=Path, help="write the figures here")
    add_setup_args(p)
    args = p.parse_args(argv)
    if args.target and not args.event_log_url:
        p.error("--target needs --event-log-url: Feedback is checked against the event log")
    return args


def report(fuzzer: Fuzzer, wall_s: float, alive: bool) -> dict:
    """The figures of a run: cases, codes by method and kind, INTERNAL counts, failures."""
    codes = fuzzer.codes
    by_code, by_method = Counter(), Counter()
    for (method, _, code), n in codes.items():
        by_code[code] += n
        by_method[method] += n
    total = sum(codes.values())
    return {
        "cases": total,
        "by_method": dict(by_method),
        "codes": dict(by_code.most_common()),
        "by_kind": {f"{m} {k} {c}": n for (m, k, c), n in sorted(codes.items())},
        "internal": by_code.get("INTERNAL", 0),
        "internal_well_formed": sum(
            n for (_, k, c), n in codes.items() if k == "well-formed" and c == "INTERNAL"
        ),  # fmt: skip
        "unknown": by_code.get("UNKNOWN", 0),
        "failures": len(fuzzer.failures),
        "first_failures": fuzzer.failures[:5],
        "server_alive_and_serving": alive,
        "wall_s": round(wall_s, 1),
        "cases_per_s": round(total / wall_s, 1),
    }


def print_report(figures: dict) -> None:
    print(f"Fuzz: {figures['cases']} cases in {figures['wall_s']} s "
          f"({figures['cases_per_s']}/s); server alive and SERVING at the end: "
          f"{figures['server_alive_and_serving']}")  # fmt: skip
    print(f"crashes 0, INTERNAL {figures['internal']} ({figures['internal_well_formed']} on "
          f"well-formed), UNKNOWN {figures['unknown']}, failed checks {figures['failures']}"
          if figures["server_alive_and_serving"] else "crashes 1: the server died")  # fmt: skip
    print("| method | request | status | cases |\n| --- | --- | --- | ---: |")
    for key, n in figures["by_kind"].items():
        method, rest = key.split(" ", 1)
        what, code = rest.rsplit(" ", 1)
        print(f"| {method} | {what} | {code} | {n} |")
    for failure in figures["first_failures"]:
        print("FAILED:", failure)


def run(args: argparse.Namespace, target: str, url: str, features: Path,
        proc: subprocess.Popen | None) -> dict:  # fmt: skip
    users, items = known_ids(features)
    columns = item_columns(features)
    upserts = "on" if columns else "off (no encoder graph in the features summary)"
    log.info("fuzzing %s: %d cases, %d users and %d items known, UpsertItems %s", target,
             args.cases, len(users), len(items), upserts)  # fmt: skip
    fuzzer = Fuzzer(target, url, items, proc)
    strategy = all_cases(users, items, ServerConfig().max_candidates, columns)
    start = time.perf_counter()
    try:
        with tqdm(total=args.cases, desc="fuzz", unit="case") as bar:
            fuzz(fuzzer, strategy, args.cases, seed=args.seed,
                 stop_on_failure=args.stop_on_failure, health_every=args.health_every,
                 progress=bar)  # fmt: skip
    except AssertionError as exc:  # ServerDied, or a failure with --stop-on-failure
        log.error("%s", exc)
    wall = time.perf_counter() - start
    try:
        return report(fuzzer, wall, fuzzer.serving())
    finally:
        fuzzer.close()


def main(argv: list[str] | None = None) -> int:
    from benchmarks import processes
    from benchmarks.load import features_dir
    from benchmarks.serving import setup

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="tailrank-fuzz-") as tmp:
        repo, model = setup(args, Path(tmp))
        features = features_dir(repo, args.fs_yaml)
        synthetic = json.loads((model / "manifest.json").read_text())["model_version"]
        if synthetic == "synthetic-untrained" and item_columns(features) is None:
            add_encoder_summary(features)  # UpsertItems is fuzzed too
        proc, target, url = None, args.target, args.event_log_url
        if target is None:
            url = f"sqlite:///{Path(tmp) / 'events.db'}"
            repo, fs_yaml = writable_copy(repo, args.fs_yaml, Path(tmp))
            proc, target, metrics_port = processes.launch(
                repo, model, fs_yaml, args.processes, args, event_log_url=url, log_level="ERROR"
            )
            processes.wait_up(proc, metrics_port, args.processes)
        try:
            figures = run(args, target, url, features, proc)
        finally:
            if proc is not None:
                processes.stop(proc)
    print_report(figures)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if figures["server_alive_and_serving"] and not figures["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
