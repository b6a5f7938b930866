"""Scale benchmark: the synthetic shop at three sizes, through the pipeline `make serve` runs.

    python -m benchmarks.scale --sizes 10k --train-steps 200        # `make scale SIZES=10k`
    python -m benchmarks.scale --sizes 10k 100k 1m --json artifacts/scale/scale.json
    python -m benchmarks.scale --sizes custom --n-items 500 --n-users 200 --n-events 5000 \\
        --stages data features materialize

Sizes (users chosen so a user has 20 events on average, as in every preset):

==========  =========  ==========  ==========
size        items      events      users
==========  =========  ==========  ==========
``10k``     10,000     100,000     5,000
``100k``    100,000    1,000,000   50,000
``1m``      1,000,000  10,000,000  500,000
``custom``  --n-items  --n-events  --n-users
==========  =========  ==========  ==========

Per size, under ``--out/<size>``, each stage runs as its own ``python -m`` subprocess with
the command and flags of the Makefile target named in brackets (``stage_commands``), paths
moved into the work folder:

- ``data`` [data]: ``training.data --dataset synthetic``; throughput events/s;
- ``features`` [features]: ``training.features``; texts/s = texts encoded / wall time
  (from its features_summary.json, which also says how many came from the embedding cache).
  The embedding cache is a fresh, empty folder per run (a cold run: every text is
  encoded) unless ``--warm-cache`` reuses ``<size>/embedding-cache`` from the last run;
- ``materialize`` [materialize]: ``training.feast_repo`` (``feast apply`` +
  ``feast materialize`` into the ``--store`` online store); rows/s = item + user rows;
- ``train`` [model]: ``training.train --mode deploy``; events/s = events trained (epochs
  run x steps x batch) / seconds of the training steps, from the run's
  ``train_summary.json`` (data loading and the validation passes excluded; validation is
  reported apart). ``--train-steps N`` caps the run at N steps per epoch and
  ``--train-epochs`` epochs (``--max-steps-per-epoch``, ``--epochs``); the report then
  says "capped" and extrapolates a full epoch (train events / measured events/s) and the
  Makefile's full run (its ``--epochs`` upper bound, before early stopping, each epoch with
  a validation pass over the run's validation sample);
- ``export`` [model]: ``training.export``; throughput: none (the ONNX file's size is
  reported);
- ``serve`` [serve]: ``python -m serving`` started as ``benchmarks.processes.start``
  starts it (the default process count, one per core, as `make serve`; no event log);
  start-up = Popen to every process answering on /metrics (polled every 0.5 s), RSS of
  the server's process tree after warm-up and the Rank load; Rank p50/p99 at
  ``--candidates`` candidates, one call in flight, ``--requests`` calls
  (``benchmarks.load.drive`` in a separate process);
- ``quality`` [evaluate]: ``training.features --mode eval``, ``training.train --mode eval``
  (same cap) and ``training.evaluate``, each measured like a stage
  (``features_eval``, ``train_eval``, ``evaluate``); HR@10, NDCG@10, TailHR@10 of the
  fusion model, MostPopular and BPR-MF from its metrics.json (``--skip-quality``: none).

Memory: a sampler thread reads /proc every 0.2 s and sums VmRSS over the stage's process
and all its descendants (``peak_rss_mb``: the largest sum seen; a spike shorter than a
poll can be missed); ``max_process_rss_mb`` is the kernel's exact high-water mark of the
largest single process of the tree (``ru_maxrss`` of ``os.wait4``). For the server the
tree's RSS is also read once after warm-up (``rss_mb``).

``--reference`` also starts the MovieLens-100K server that `make serve` builds
(``artifacts/movielens-100k`` + ``feature_repo/data/movielens-100k``) when it exists,
and measures its Rank p50/p99 the same way in the same run, so the target "p99 within
1.3x of ML-100K" compares like with like. Before a size starts, free disk and available
memory are checked against a rough estimate of its needs (``estimate_needs``; ``--no-check``
skips it). The targets of issue 11 are recorded in the JSON and printed, never asserted.
Prints one markdown table per size; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from core import contract, schema
from core.files import write_json_atomic

log = logging.getLogger("benchmarks.scale")
ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
GB = 1024 * MB
POLL_S = 0.2


@dataclass(frozen=True)
class Size:
    """One synthetic shop."""

    items: int
    events: int
    users: int


SIZES = {
    "10k": Size(items=10_000, events=100_000, users=5_000),
    "100k": Size(items=100_000, events=1_000_000, users=50_000),
    "1m": Size(items=1_000_000, events=10_000_000, users=500_000),
}
STAGES = ("data", "features", "materialize", "train", "export", "serve", "quality")
STORE_TEMPLATES = {
    "sqlite": "feature_store.yaml",
    "postgres": "feature_store.postgres.yaml",
    "redis": "feature_store.redis.yaml",
}
REFERENCE = ("artifacts/movielens-100k", "feature_repo/data/movielens-100k")
QUALITY_MODELS = ("FusionCTR", "MostPopular", "BPR-MF")
QUALITY_METRICS = ("HR@10", "NDCG@10", "TailHR@10")
# issue 11's targets (recorded, not asserted)
TARGET_PIPELINE_S = {"100k": 15 * 60}
TARGET_STAGE_RSS_MB = {"1m": 16 * 1024}
TARGET_SERVER_RSS_MB, TARGET_STARTUP_S, TARGET_P99_RATIO = 4 * 1024, 120.0, 1.3


# --- memory of a process tree -----------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, RSS in bytes) of every process readable in /proc."""
    table = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        table[int(entry.name)] = (int(fields[1]), int(fields[21]) * page)  # ppid, rss pages
    return table


def _tree(pid: int, table: dict[int, tuple[int, int]]) -> list[int]:
    """``pid`` and every descendant of it in ``table`` (``_proc_table``)."""
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        if current in table:
            found.append(current)
        todo += children.get(current, [])
    return found


def tree_rss(pid: int) -> int:
    """Bytes of RSS summed over ``pid`` and every descendant (0 once it is gone). Pages
    several processes share (the server workers' memory-mapped item table, the parent's
    pages after fork) count once per process: ``tree_pss`` counts them once."""
    table = _proc_table()
    return sum(table[p][1] for p in _tree(pid, table))


def tree_pss(pid: int) -> int:
    """Bytes of PSS (proportional set size: a page shared by n processes counts 1/n in
    each) summed over ``pid`` and every descendant: the memory the tree costs the
    machine. 0 where /proc/<pid>/smaps_rollup cannot be read."""
    total = 0
    for current in _tree(pid, _proc_table()):
        try:
            with open(f"/proc/{current}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


class RssSampler:
    """Polls ``tree_rss(pid)`` every ``POLL_S`` on a thread; ``peak`` is the largest sum."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(POLL_S)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_stage(name: str, argv: list[str], logs: Path) -> dict:
    """Run ``python -m <argv>`` from the repo root, output to ``logs/<name>.log``; return
    wall seconds, peak tree RSS and the largest process's exact peak. A failed stage
    raises with the end of its log."""
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{name}.log"
    log.info("%s: python -m %s", name, " ".join(argv))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with path.open("w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
        sampler = RssSampler(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    peak = sampler.stop()
    if proc.returncode != 0:
        tail = "".join(path.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise RuntimeError(f"stage {name} failed (exit {proc.returncode}); {path} ends:\n{tail}")
    return {
        "command": "python -m " + " ".join(argv),
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak / MB, 1),
        "max_process_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "log": str(path),
    }


# --- the pipeline's commands ------------------------------------------------------------
class Paths:
    """Where one size's stages write: the Makefile's layout (data, features, features_eval,
    run, run-eval), under the size's work folder, plus its embedding cache and logs."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.data, self.features = work / "data", work / "features"
        self.features_eval = work / "features_eval"
        self.run, self.run_eval = work / "run", work / "run-eval"
        self.cache, self.logs = work / "embedding-cache", work / "logs"


def stage_commands(size: Size, paths: Paths, args: argparse.Namespace, name: str) -> dict:
    """argv after ``python -m`` per stage: the Makefile's recipes (data, features,
    materialize, model, evaluate) with this run's folders, store and training cap."""
    repo = ROOT / "feature_repo"
    train_cap = []
    if args.train_steps:
        train_cap = ["--max-steps-per-epoch", str(args.train_steps)]
        train_cap += ["--epochs", str(args.train_epochs)]
    if args.valid_users is not None:
        train_cap += ["--valid-users", str(args.valid_users)]
    cache = ["--cache-dir", str(paths.cache)]
    features_cmd = ["training.features"]
    if args.random_content:  # every stage but the encoder (benchmarks.random_features)
        features_cmd, cache = ["benchmarks.random_features"], []
    return {
        "data": ["training.data", "--dataset", "synthetic", "--n-items", str(size.items),
                 "--n-users", str(size.users), "--n-events", str(size.events),
                 "--seed", str(args.seed), "--out", str(paths.data)],
        "features": [*features_cmd, "--data", str(paths.data), "--out",
                     str(paths.features), *cache],
        "materialize": ["training.feast_repo", "--repo", str(repo), "--features",
                        str(paths.features), "--template",
                        str(repo / STORE_TEMPLATES[args.store]), "--name", name],
        "train": ["training.train", "--data", str(paths.data), "--features",
                  str(paths.features), "--mode", "deploy", "--out", str(paths.run), *train_cap],
        "export": ["training.export", "--run", str(paths.run)],
        "features_eval": [*features_cmd, "--data", str(paths.data), "--out",
                          str(paths.features_eval), "--mode", "eval", *cache],
        "train_eval": ["training.train", "--data", str(paths.data), "--features",
                       str(paths.features_eval), "--mode", "eval", "--out",
                       str(paths.run_eval), *train_cap],
        "evaluate": ["training.evaluate", "--run", str(paths.run_eval),
                     "--users", str(args.eval_users)],
    }  # fmt: skip


# --- throughput of each stage -----------------------------------------------------------
def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def data_figures(row: dict, paths: Paths) -> dict:
    summary = _json(paths.data / schema.SUMMARY_FILE)
    return {"events": summary["events"], "events_per_s": summary["events"] / row["wall_s"]}


def features_figures(row: dict, folder: Path) -> dict:
    summary = _json(folder / schema.FEATURES_SUMMARY_FILE)
    encoded, cached = summary["texts_encoded"], summary["texts_cached"]
    return {"texts_encoded": encoded, "texts_cached": cached,
            "cache": "cold" if cached == 0 else "warm" if encoded == 0 else "partly warm",
            "texts_per_s": encoded / row["wall_s"] if encoded else None,
            "random_content": str(summary["encoder"]).startswith("random"),
            "items": summary["items"], "users": summary["users"]}  # fmt: skip


def materialize_figures(row: dict, paths: Paths) -> dict:
    summary = _json(paths.features / schema.FEATURES_SUMMARY_FILE)
    rows = summary["items"] + summary["users"]
    return {"rows": rows, "rows_per_s": rows / row["wall_s"]}


def train_figures(run: Path, counts: dict, mode: str) -> dict:
    """Events/s of the training steps (``train_summary.json``: validation excluded,
    reported apart); the Makefile's full run extrapolated when this one was capped (fewer
    steps per epoch or fewer epochs): epochs x (train events / events/s + a validation
    pass over the run's validation sample)."""
    from training.config import TrainConfig

    config = _json(run / "config.json")
    summary = _json(run / "train_summary.json")
    train_events = counts["train_events"] + (counts["valid_events"] if mode == "deploy" else 0)
    full_steps = -(-train_events // config["batch_size"])
    steps = min(full_steps, config["max_steps_per_epoch"] or full_steps)
    epochs = max(summary["steps"] // max(steps, 1), 1)
    rate = summary["events_per_second"]
    validation = summary["train_seconds"] - summary["step_seconds"]
    full_epochs = TrainConfig().epochs  # the Makefile's run: the default upper bound
    holdout = counts["test_events"]  # one validation case per user with >= 3 events
    covered = min(config["valid_users"] or holdout, holdout)
    out = {"train_events": train_events, "epochs_run": epochs, "steps_per_epoch": steps,
           "full_steps_per_epoch": full_steps, "batch_size": config["batch_size"],
           "events_trained": summary["steps"] * config["batch_size"],
           "train_loop_s": summary["step_seconds"], "events_per_s": rate,
           "validation_s": validation, "validation_users": covered,
           "train_seconds": summary["train_seconds"],
           "capped": steps < full_steps or config["epochs"] < full_epochs}  # fmt: skip
    if out["capped"]:
        out["full_epoch_s_est"] = train_events / rate
        out["full_run_s_est"] = full_epochs * (train_events / rate + validation / epochs)
        out["full_run_epochs"] = full_epochs
    return out


def quality_figures(run_eval: Path) -> dict:
    report = _json(run_eval / "metrics.json")
    return {
        model: {m: report["models"][model][m] for m in QUALITY_METRICS}
        for model in QUALITY_MODELS
        if model in report["models"]
    }


# --- the server ----------------------------------------------------------------------------
def measure_server(
    model: Path, fs_yaml: Path, args: argparse.Namespace, pool: ProcessPoolExecutor
) -> dict:
    """Start ``python -m serving`` as a subprocess; start-up time, tree RSS (peak while
    starting and serving, and after warm-up + the Rank load), Rank p50/p99 at one call in
    flight."""
    from benchmarks import processes
    from benchmarks.load import drive, make_calls, percentiles_ms
    from serving.config import ServerConfig

    defaults = ServerConfig()  # what `make serve` runs: every default
    count = defaults.process_count
    server_args = argparse.Namespace(server_workers=defaults.workers,
                                     ort_threads=defaults.ort_threads)  # fmt: skip
    start = time.perf_counter()
    proc, target, metrics_port = processes.launch(
        ROOT / "feature_repo", model, fs_yaml, count, server_args
    )
    sampler = RssSampler(proc.pid)
    try:
        processes.wait_up(proc, metrics_port, count, timeout_s=args.startup_timeout, poll_s=0.2)
        startup = time.perf_counter() - start
        calls = make_calls(model, fs_yaml.parent, args.requests, args.candidates)
        run = pool.submit(drive, target, calls, 1).result()
        rss, pss = tree_rss(proc.pid), tree_pss(proc.pid)
    finally:
        if proc.poll() is None:
            processes.stop(proc)
        peak = sampler.stop()
    lat = percentiles_ms(run["latencies"])
    return {"processes": count, "startup_s": round(startup, 2), "rss_mb": round(rss / MB, 1),
            "pss_mb": round(pss / MB, 1),
            "peak_rss_mb": round(peak / MB, 1), "candidates": args.candidates,
            "requests": len(run["latencies"]), "rank_p50_ms": lat["p50_ms"],
            "rank_p99_ms": lat["p99_ms"]}  # fmt: skip


def reference_server(args: argparse.Namespace, pool: ProcessPoolExecutor) -> dict | None:
    """The ML-100K server of `make serve`, measured like the scale servers (None if absent)."""
    model, features = (ROOT / p for p in REFERENCE)
    fs_yaml = features / STORE_TEMPLATES["sqlite"]
    if not (model / contract.MANIFEST_FILE).is_file() or not fs_yaml.is_file():
        log.warning("--reference: no %s with %s (run `make model materialize`): skipped",
                    model, fs_yaml)  # fmt: skip
        return None
    return measure_server(model, fs_yaml, args, pool)


# --- one size -----------------------------------------------------------------------------
def estimate_needs(size: Size) -> dict[str, float]:
    """Rough bytes of disk and memory a size needs (a sanity check, not a model): tables
    at ~150 B/event over their copies, 384-d float32 content vectors in two feature sets
    and the cache, and a training peak of the full catalogue softmax's [batch, items]
    logits with their gradients (x8; only up to ``full_softmax_max_items``, above which it
    is sampled) or the events in pandas (~300 B/event), whichever is larger. Training
    checks its own needs precisely before its first step (``training.train.check_fits``)."""
    from training.config import TrainConfig

    vectors = size.items * 384 * 4
    disk = size.events * 150 + 3 * vectors + size.users * 50 * 16
    full = size.items <= TrainConfig().full_softmax_max_items
    ram = max(size.events * 300, 512 * size.items * 4 * 8 * full) + 4 * vectors
    return {"disk_bytes": disk, "ram_bytes": ram}


def check_resources(name: str, size: Size, work: Path) -> None:
    """Fail early when the disk or the memory is clearly too small for ``size``."""
    need = estimate_needs(size)
    work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(work).free
    from training.train import memory_available

    mem = memory_available()
    problems = []
    if free < 2 * need["disk_bytes"]:
        problems.append(f"{free / GB:.1f} GB free disk under {work}, about "
                        f"{2 * need['disk_bytes'] / GB:.1f} GB wanted")  # fmt: skip
    if mem is not None and mem < need["ram_bytes"]:
        problems.append(f"{mem / GB:.1f} GB memory available, about "
                        f"{need['ram_bytes'] / GB:.1f} GB wanted at the peak")  # fmt: skip
    if problems:
        raise SystemExit(
            f"size {name} ({size.items} items, {size.events} events): "
            + "; ".join(problems)
            + ". Free some, choose a smaller size, or pass --no-check to try anyway."
        )


def run_size(name: str, size: Size, args: argparse.Namespace, pool, save) -> dict:
    """Every selected stage for one size; the figures as a dict (also what --json holds),
    handed to ``save`` after each stage, so a run stopped half-way keeps what it measured."""
    paths = Paths(args.out / name)
    if not args.no_check:
        check_resources(name, size, paths.work)
    commands = stage_commands(size, paths, args, f"scale_{name}")
    stages: dict[str, dict] = {}
    result = {"size": name, "items": size.items, "events": size.events, "users": size.users,
              "store": args.store, "stages": stages}  # fmt: skip
    selected = [s for s in STAGES if s in args.stages]
    if "quality" in selected and args.skip_quality:
        selected.remove("quality")
    order = [s for s in selected if s != "quality"]
    order += ["features_eval", "train_eval", "evaluate"] if "quality" in selected else []
    graph = ROOT / "data/cache/text-onnx"
    result["encoder_graph_cached"] = graph.is_dir() and any(graph.rglob("*.onnx"))
    summary = paths.data / schema.SUMMARY_FILE
    for stage in tqdm(order, desc=f"scale {name}", unit="stage"):
        if stage == "serve":
            fs_yaml = paths.features / STORE_TEMPLATES[args.store]
            stages["serve"] = measure_server(paths.run, fs_yaml, args, pool)
            save(result)
            continue
        if stage == "features" and not args.warm_cache:
            shutil.rmtree(paths.cache, ignore_errors=True)  # a cold run: encode every text
        if stage in ("train", "train_eval"):  # no TensorBoard log of an earlier run
            shutil.rmtree(paths.run if stage == "train" else paths.run_eval, ignore_errors=True)
        row = stages[stage] = run_stage(stage, commands[stage], paths.logs)
        if stage == "data":
            row.update(data_figures(row, paths))
        elif stage in ("features", "features_eval"):
            folder = paths.features if stage == "features" else paths.features_eval
            row.update(features_figures(row, folder))
        elif stage == "materialize":
            row.update(materialize_figures(row, paths))
        elif stage in ("train", "train_eval"):
            run = paths.run if stage == "train" else paths.run_eval
            row.update(train_figures(run, _json(summary), _mode(commands[stage])))
        elif stage == "export":
            row["onnx_mb"] = round((paths.run / contract.ONNX_FILE).stat().st_size / MB, 2)
        elif stage == "evaluate":
            report = _json(paths.run_eval / "metrics.json")
            row["test_cases"] = report["n_cases"]
            row["cases_per_s"] = report["n_cases"] / row["wall_s"]
            result["quality"] = quality_figures(paths.run_eval)
        save(result)
    return result


def to_serving(result: dict) -> None:
    """Add the whole pipeline's time to SERVING (every stage up to the server's start-up)
    when every one of them ran, and, when training was capped, the same with the
    extrapolated full training in place of the capped one."""
    stages = result["stages"]
    steps = ("data", "features", "materialize", "train", "export")
    if not all(s in stages for s in (*steps, "serve")):
        return
    total = sum(stages[s]["wall_s"] for s in steps) + stages["serve"]["startup_s"]
    result["to_serving_s"] = total
    train = stages["train"]
    if train["capped"]:
        result["to_serving_full_s_est"] = total + train["full_run_s_est"] - train["train_seconds"]


def _mode(argv: list[str]) -> str:
    return argv[argv.index("--mode") + 1]


def record_targets(result: dict, reference: dict | None) -> dict:
    """Issue 11's targets that apply to this size: value, limit and whether it is met."""
    name, stages = result["size"], result["stages"]
    targets = {}
    if name in TARGET_PIPELINE_S and "to_serving_s" in result:
        capped = "to_serving_full_s_est" in result
        total = result["to_serving_full_s_est" if capped else "to_serving_s"]
        targets["pipeline_to_serving_s"] = {"value": total, "limit": TARGET_PIPELINE_S[name],
                                            "extrapolated": capped}  # fmt: skip
    if name in TARGET_STAGE_RSS_MB:
        peak = max((s.get("peak_rss_mb", 0) for s in stages.values()), default=0)
        targets["stage_peak_rss_mb"] = {"value": peak, "limit": TARGET_STAGE_RSS_MB[name]}
    if "serve" in stages:
        serve = stages["serve"]
        # the memory the server costs the machine: shared pages (the workers' one
        # memory-mapped item table) once, not once per worker as summed RSS counts them
        memory = serve.get("pss_mb") or serve["rss_mb"]
        targets["server_pss_mb"] = {"value": memory, "limit": TARGET_SERVER_RSS_MB}
        targets["server_startup_s"] = {"value": serve["startup_s"], "limit": TARGET_STARTUP_S}
        if reference:
            ratio = serve["rank_p99_ms"] / reference["rank_p99_ms"]
            targets["rank_p99_vs_ml100k"] = {"value": ratio, "limit": TARGET_P99_RATIO}
    for target in targets.values():
        target["met"] = target["value"] <= target["limit"]
    return targets


# --- report -------------------------------------------------------------------------------
def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def throughput_cell(stage: str, row: dict) -> str:
    if stage == "data":
        return f"{_num(row['events_per_s'], 0)} events/s"
    if stage in ("features", "features_eval"):
        if row.get("random_content"):
            return f"random content vectors, no encoder ({row['items']:,} items)"
        rate = row["texts_per_s"]
        what = f"{_num(rate)} texts/s" if rate else "no text encoded"
        return f"{what} ({row['cache']} cache: {row['texts_encoded']:,} encoded, " \
               f"{row['texts_cached']:,} cached)"  # fmt: skip
    if stage == "materialize":
        return f"{_num(row['rows_per_s'], 0)} rows/s ({row['rows']:,} rows)"
    if stage in ("train", "train_eval"):
        cell = f"{_num(row['events_per_s'], 0)} events/s ({row['epochs_run']} x " \
               f"{row['steps_per_epoch']} steps of {row['batch_size']}, loop " \
               f"{_num(row['train_loop_s'])} s; validation {_num(row['validation_s'])} s " \
               f"on {row['validation_users']:,} users)"  # fmt: skip
        if row["capped"]:
            cell += (f"; capped: full epoch ≈ {_num(row['full_epoch_s_est'], 0)} s, "
                     f"{row['full_run_epochs']} epochs ≈ {_num(row['full_run_s_est'], 0)} s "
                     "(extrapolated)")  # fmt: skip
        return cell
    if stage == "export":
        return f"ONNX {row['onnx_mb']} MB"
    if stage == "evaluate":
        return f"{_num(row['cases_per_s'])} test cases/s ({row['test_cases']:,} cases)"
    return "-"


def markdown(result: dict, reference: dict | None) -> str:
    """The size's tables: stages, server, quality, targets."""
    head = (f"{result['size']}: {result['items']:,} items, {result['events']:,} events, "
            f"{result['users']:,} users, {result['store']} online store")  # fmt: skip
    lines = [head, "", "| stage | wall s | peak RSS MB (tree) | max process RSS MB | throughput |",
             "| --- | ---: | ---: | ---: | --- |"]  # fmt: skip
    for stage, row in result["stages"].items():
        if stage == "serve":
            continue
        lines.append(
            f"| {stage} | {_num(row['wall_s'])} | {_num(row['peak_rss_mb'], 0)} "
            f"| {_num(row['max_process_rss_mb'], 0)} | {throughput_cell(stage, row)} |"
        )
    servers = [("scale", result["stages"].get("serve")), ("ML-100K reference", reference)]
    servers = [(label, s) for label, s in servers if s]
    if servers:
        lines += [
            "",
            "| server | processes | start-up s | RSS MB after warm-up | PSS MB after warm-up "
            "| peak RSS MB | Rank p50 ms | Rank p99 ms |",
            "| --- |" + " ---: |" * 7,
        ]
        for label, s in servers:
            lines.append(
                f"| {label} | {s['processes']} | {_num(s['startup_s'])} "
                f"| {_num(s['rss_mb'], 0)} | {_num(s.get('pss_mb'), 0)} "
                f"| {_num(s['peak_rss_mb'], 0)} "
                f"| {_num(s['rank_p50_ms'], 2)} | {_num(s['rank_p99_ms'], 2)} |"
            )
    if result.get("quality"):
        lines += [
            "",
            "| model | " + " | ".join(QUALITY_METRICS) + " |",
            "| --- |" + " ---: |" * len(QUALITY_METRICS),
        ]
        for model, metrics in result["quality"].items():
            cells = " | ".join(f"{metrics[m]:.4f}" for m in QUALITY_METRICS)
            lines.append(f"| {model} | {cells} |")
    if "to_serving_s" in result:
        line = f"whole pipeline to SERVING: {_num(result['to_serving_s'], 0)} s"
        if "to_serving_full_s_est" in result:
            line += (f" with training capped; ≈ {_num(result['to_serving_full_s_est'], 0)} s "
                     "with the full training extrapolated")  # fmt: skip
        lines += ["", line]
    if result.get("targets"):
        lines += ["", "targets (recorded, not asserted):"]
        for what, t in result["targets"].items():
            est = " (training extrapolated)" if t.get("extrapolated") else ""
            lines.append(f"- {what}: {_num(t['value'], 2)} <= {t['limit']}{est}: "
                         f"{'met' if t['met'] else 'NOT met'}")  # fmt: skip
    return "\n".join(lines)  # fmt: skip


# --- CLI ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sizes",
        nargs="+",
        default=["10k"],
        choices=[*SIZES, "custom"],
        help="presets (see above) or custom (--n-items/--n-events/--n-users)",
    )
    p.add_argument("--n-items", type=int, help="custom size: items")
    p.add_argument("--n-events", type=int, help="custom size: events")
    p.add_argument("--n-users", type=int, help="custom size: users")
    p.add_argument("--seed", type=int, default=0, help="synthetic shop seed (default 0)")
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "artifacts/scale",
        help="work folder, one subfolder per size (default artifacts/scale)",
    )
    p.add_argument(
        "--store",
        choices=list(STORE_TEMPLATES),
        default="sqlite",
        help="online store (its template in feature_repo/; default sqlite)",
    )
    p.add_argument(
        "--stages",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        help="run only these (a stage reads what earlier ones left in --out)",
    )
    p.add_argument(
        "--train-steps",
        type=int,
        default=0,
        help="cap each epoch at N steps (default 0: the Makefile's full run)",
    )
    p.add_argument(
        "--train-epochs",
        type=int,
        default=1,
        help="epochs of a capped run (--train-steps; default 1)",
    )
    p.add_argument(
        "--valid-users",
        type=int,
        default=None,
        help="training's --valid-users (default: training's own, a 2,000-user sample)",
    )
    p.add_argument(
        "--eval-users",
        type=int,
        default=5000,
        help="training.evaluate --users: a seeded sample of test users (0 = all; default 5000)",
    )
    p.add_argument(
        "--random-content",
        action="store_true",
        help="features with random content vectors instead of the encoder "
        "(benchmarks.random_features): every other stage at sizes the encoder cannot reach",
    )
    p.add_argument(
        "--warm-cache",
        action="store_true",
        help="reuse the size's embedding cache from the last run (default: cold)",
    )
    p.add_argument("--skip-quality", action="store_true", help="no eval-mode run / evaluation")
    p.add_argument(
        "--reference",
        action="store_true",
        help="also measure the ML-100K server of `make serve`, if built",
    )
    p.add_argument("--candidates", type=int, default=200, help="candidates per Rank call")
    p.add_argument("--requests", type=int, default=1000, help="Rank calls, one in flight")
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=600,
        help="seconds the server may take to start (default 600)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the free disk/memory check")
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args(argv)  # fmt: skip
    custom = (args.n_items, args.n_events, args.n_users)
    if "custom" in args.sizes and not all(custom):
        p.error("--sizes custom needs --n-items, --n-events and --n-users")
    if any(custom) and "custom" not in args.sizes:
        p.error("--n-items/--n-events/--n-users set the custom size: add --sizes custom")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out = args.out.resolve()
    sizes = dict(SIZES)
    if "custom" in args.sizes:
        sizes["custom"] = Size(items=args.n_items, events=args.n_events, users=args.n_users)
    report: dict = {"cpus": len(os.sched_getaffinity(0)), "python": sys.version.split()[0],
                    "argv": sys.argv[1:] if argv is None else argv, "sizes": {}}  # fmt: skip

    def save(result: dict) -> None:
        report["sizes"][result["size"]] = result
        report["load_average"] = os.getloadavg()
        if args.json:
            write_json_atomic(args.json, report)

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        reference = reference_server(args, pool) if args.reference else None
        report["reference"] = reference
        for name in args.sizes:
            result = run_size(name, sizes[name], args, pool, save)
            to_serving(result)
            result["targets"] = record_targets(result, reference)
            save(result)
            print(markdown(result, reference), "\n", flush=True)
    if args.json:
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
