"""benchmarks.soak: a few seconds of it against the real ``python -m serving --processes 2``
over the tiny Feast repo and model (the 10-minute record is in docs/BENCHMARKS.md).

    pytest tests/test_soak.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.soak import memory_mb, process_tree

ROOT = Path(__file__).resolve().parents[1]


def test_memory_is_summed_over_the_process_and_its_children() -> None:
    code = "import time; print('up', flush=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "up\n"  # the interpreter is running
        assert child.pid in process_tree(os.getpid())
        alone, both = memory_mb(child.pid), memory_mb(os.getpid())
        assert 0 < alone["pss_mb"] <= alone["rss_mb"]
        assert both["rss_mb"] > alone["rss_mb"] + 1  # this process (pytest, numpy) adds its own
    finally:
        child.kill()
        child.wait()


@pytest.mark.integration
@pytest.mark.slow  # 50-80 s on 2 busy cores: most of it two server processes starting
def test_a_short_soak_holds_the_rate_without_errors(
    tiny_feature_repo: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "soak.json"
    argv = [sys.executable, "-m", "benchmarks.soak", "--repo", str(tiny_feature_repo),
            "--model", str(tiny_model_dir), "--processes", "2",
            "--duration", "6", "--interval", "2", "--peak-requests", "300", "--calls", "300",
            "--candidates", "8", "--load", "0.3", "--json", str(out)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    s, rows = figures["summary"], figures["intervals"]
    assert [r["t_s"] for r in rows[:2]] == [2.0, 4.0] and len(rows) == 3
    assert s["errors"] == 0 and s["answered"] == s["sent"] == sum(r["sent"] for r in rows)
    assert s["rate"] == pytest.approx(0.3 * s["peak_rps"], rel=0.01)
    assert s["sent_per_s"] == pytest.approx(s["rate"], rel=0.1)  # paced, not as fast as it can
    # a supervisor and two workers: RSS counts the shared item table and libraries in
    # each, PSS once
    assert all(r["pss_mb"] < r["rss_mb"] and r["rss_mb"] > 100 for r in rows)
    assert "rss_growth_pct" in s and figures["serving_at_end"] is True
    assert figures["eventlog"]["written"] > 0 and figures["eventlog"]["dropped"] == 0
    assert "| t (s) | sent | answered | errors | p50 ms | p99 ms | RSS MB | PSS MB |" in done.stdout
