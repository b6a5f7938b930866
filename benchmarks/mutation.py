"""Mutation testing of core/ and the request and event checks, scored per module.

    python -m benchmarks.mutation              # fresh mutmut run, then the table (`make mutation`)
    python -m benchmarks.mutation --report     # the table of the last run in mutants/
    python -m benchmarks.mutation --survivors  # the table, then every surviving mutant's name

mutmut 3 (``[tool.mutmut]`` in pyproject.toml) copies the packages into ``mutants/``, mutates
every function of the files in ``only_mutate`` and, per mutant, runs the fast unit tests
that call the mutated function. ``TARGETS`` chooses which mutants run: all of core/,
serving/eventschema.py and training/metrics.py, but of serving/server.py and
serving/eventlog.py only the request and feedback checks (their servicer and writer
belong to the integration suite, too slow to run once per mutant). ``mutmut show NAME``
prints one mutant's diff. The score counts as mutmut's own badge does:
(killed + timeout) / mutants run; "no tests" is a miss.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

MUTANTS = Path("mutants")

# module -> mutmut name patterns of the functions whose mutants run
TARGETS: dict[str, list[str]] = {
    "core/cli.py": ["core.cli.*"],
    "core/contract.py": ["core.contract.*"],
    "core/files.py": ["core.files.*"],
    "core/ids.py": ["core.ids.*"],
    "core/rerank.py": ["core.rerank.*"],
    "core/schema.py": ["core.schema.*"],
    "serving/eventschema.py": ["serving.eventschema.*"],
    "serving/server.py": ["serving.server.x_validate__mutmut_*", "serving.server.x__check_id__*"],
    "serving/eventlog.py": [
        "serving.eventlog.x_parse_feedback__*",
        "serving.eventlog.x_feedback_row__*",
        "serving.eventlog.x_feedback_params__*",
    ],
    "training/metrics.py": ["training.metrics.*"],
}

# mutmut's exit codes (mutmut/stats.py) folded into what the score needs
KILLED, SURVIVED, NO_TESTS, NOT_RUN = "killed", "survived", "no tests", "not checked"
STATUS = {1: KILLED, 3: KILLED, 36: KILLED, 24: KILLED, -24: KILLED, 152: KILLED, 255: KILLED}
STATUS |= {0: SURVIVED, 5: NO_TESTS, 33: NO_TESTS, 34: "skipped"}


def patterns() -> list[str]:
    return [p for module in TARGETS.values() for p in module]


def run_mutmut(jobs: int, keep: bool) -> float:
    """Run mutmut over ``TARGETS`` (from scratch unless ``keep``); return the wall time."""
    if MUTANTS.is_dir() and not keep:
        shutil.rmtree(MUTANTS)
    exe = Path(sys.executable).with_name("mutmut")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mutmut"]
    start = time.perf_counter()
    subprocess.run([*cmd, "run", "--max-children", str(jobs), *patterns()], check=True)
    return time.perf_counter() - start


def results() -> dict[str, dict[str, str]]:
    """module -> {mutant name: status} for the mutants ``TARGETS`` selects."""
    out: dict[str, dict[str, str]] = {}
    for module, globs in TARGETS.items():
        meta = MUTANTS / (module + ".meta")
        if not meta.is_file():
            raise SystemExit(f"no {meta}: run `make mutation` first")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        out[module] = {
            name: NOT_RUN if code is None else STATUS.get(code, "suspicious")
            for name, code in codes.items()
            if any(fnmatch.fnmatchcase(name, g) for g in globs)
        }
    return out


def label(module: str) -> str:
    """The module, with the functions run when only some are (e.g. ``validate``)."""
    names = [g.rsplit(".", 1)[1] for g in TARGETS[module] if not g.endswith(".*")]
    names = [n.removeprefix("x_").partition("__mutmut")[0].removesuffix("__*") for n in names]
    return f"`{module}`" + (f" ({', '.join(names)})" if names else "")


def table(by_module: dict[str, dict[str, str]]) -> str:
    """A Markdown table: killed / run and the score per module, then the total."""
    lines = [
        "| module | killed / mutants | score | survived | no tests |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    total = Counter()
    for module, statuses in by_module.items():
        counts = Counter(statuses.values())
        run = sum(n for status, n in counts.items() if status not in (NOT_RUN, "skipped"))
        total.update(counts | {"run": run})
        lines.append(_row(label(module), counts, run))
    lines.append(_row("**all**", total, total["run"]))
    return "\n".join(lines)


def _row(label: str, counts: Counter, run: int) -> str:
    score = f"{100 * counts[KILLED] / run:.1f}%" if run else "-"
    return (
        f"| {label} | {counts[KILLED]} / {run} | {score} | {counts[SURVIVED]} "
        f"| {counts[NO_TESTS]} |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mutation", description=__doc__)
    p.add_argument("--report", action="store_true", help="no run: the table of the last run")
    p.add_argument("--survivors", action="store_true", help="list the surviving mutants too")
    p.add_argument("--keep", action="store_true", help="reuse mutants/ (mutmut's cache)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="mutants at once")
    args = p.parse_args(argv)
    wall = None if args.report or args.survivors else run_mutmut(args.jobs, args.keep)
    by_module = results()
    print(table(by_module))
    if wall is not None:
        print(f"\nmutmut run took {wall / 60:.1f} min with {args.jobs} workers")
    if args.survivors:
        for statuses in by_module.values():
            for name, status in sorted(statuses.items()):
                if status not in (KILLED, NOT_RUN):
                    print(f"{status:>10}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
