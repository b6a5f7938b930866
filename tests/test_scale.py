"""benchmarks.scale: its stages are the Makefile's commands, and a tiny shop runs through
data -> features -> materialize -> train -> export -> serve with a figure per stage."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import scale

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--sizes", "custom", "--n-items", "40", "--n-users", "60", "--n-events", "2000"]


def makefile_recipes() -> dict[tuple[str, str], set[str]]:
    """(module, --mode or '') -> the flags of the Makefile recipe that runs it."""
    recipes: dict[tuple[str, str], set[str]] = {}
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^(\w+) :?= (.*)$", text, flags=re.M))
    for line in text.splitlines():
        for ref, value in variables.items():
            line = line.replace(f"$({ref})", value)
        found = re.search(r"-m (training\.\w+)(.*)", line)
        if found and not line.startswith(("#", "MATERIALIZE")):
            mode = re.search(r"--mode (\w+)", found[2])
            key = (found[1], mode[1] if mode else "")
            recipes[key] = set(re.findall(r"(--[\w-]+)", found[2]))
    return recipes


def test_stages_run_the_makefile_commands(tmp_path: Path) -> None:
    args = scale.parse_args([*TINY, "--train-steps", "3", "--out", str(tmp_path)])
    commands = scale.stage_commands(scale.Size(40, 2000, 60), scale.Paths(tmp_path), args, "t")
    recipes = makefile_recipes()
    ours = {}
    for argv in commands.values():
        mode = argv[argv.index("--mode") + 1] if "--mode" in argv else ""
        ours[(argv[0], mode)] = {a for a in argv if a.startswith("--")}
    assert len(recipes) == 8 and set(recipes) <= set(ours)
    for key, flags in recipes.items():
        assert flags <= ours[key], f"{key}: the Makefile passes {flags - ours[key]}, scale not"
    assert {"--max-steps-per-epoch", "--epochs"} <= ours[("training.train", "deploy")]


def test_custom_size_needs_every_count() -> None:
    with pytest.raises(SystemExit):
        scale.parse_args(["--sizes", "custom", "--n-items", "40"])
    with pytest.raises(SystemExit):
        scale.parse_args(["--sizes", "10k", "--n-items", "40"])


def test_tree_rss_counts_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        assert scale.tree_rss(os.getpid()) > scale.tree_rss(child.pid) > 0
        assert scale.tree_pss(os.getpid()) > scale.tree_pss(child.pid) > 0
    finally:
        child.kill()
        child.wait()


def test_too_big_a_size_fails_before_any_work(tmp_path: Path) -> None:
    huge = scale.Size(items=10**9, events=10**12, users=10**8)
    with pytest.raises(SystemExit, match="--no-check"):
        scale.check_resources("huge", huge, tmp_path)
    assert not any(tmp_path.iterdir())


def run_scale(out: Path, *stages: str) -> tuple[dict, str]:
    """``python -m benchmarks.scale`` on the tiny shop: (its JSON for the size, stdout)."""
    report = out / f"scale-{stages[0]}.json"
    argv = [*TINY, "--stages", *stages, "--train-steps", "2", "--requests", "30",
            "--candidates", "20", "--out", str(out), "--json", str(report)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", *argv], cwd=ROOT, capture_output=True,
        text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(report.read_text())["sizes"]["custom"], done.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """The tiny shop from data to the exported model (about 30 s on 2 idle cores)."""
    out = tmp_path_factory.mktemp("scale")
    return (out, *run_scale(out, "data", "features", "materialize", "train", "export"))


@pytest.mark.integration
def test_every_stage_has_time_memory_and_throughput(tiny_run: tuple[Path, dict, str]) -> None:
    _, result, stdout = tiny_run
    stages = result["stages"]
    assert list(stages) == ["data", "features", "materialize", "train", "export"]
    for row in stages.values():
        assert row["wall_s"] > 0 and row["peak_rss_mb"] > 10 and row["max_process_rss_mb"] > 10
    assert stages["data"]["events_per_s"] > 0 and stages["data"]["events"] == 2000
    assert stages["features"]["cache"] == "cold" and stages["features"]["texts_per_s"] > 0
    assert stages["materialize"]["rows"] == 100 and stages["materialize"]["rows_per_s"] > 0
    train = stages["train"]
    assert train["capped"] and train["epochs_run"] == 1 and train["steps_per_epoch"] == 2
    assert train["events_per_s"] > 0 and train["validation_s"] > 0
    assert train["full_run_s_est"] > train["train_loop_s"]
    assert stages["export"]["onnx_mb"] > 0
    assert "| materialize |" in stdout and "capped" in stdout


@pytest.mark.integration
@pytest.mark.slow
def test_server_start_up_memory_and_rank_latency(tiny_run: tuple[Path, dict, str]) -> None:
    out, _, _ = tiny_run
    result, stdout = run_scale(out, "serve")
    serve = result["stages"]["serve"]
    assert serve["startup_s"] > 0 and serve["rss_mb"] > 10 and serve["requests"] == 30
    assert 10 < serve["pss_mb"] <= serve["rss_mb"] * 1.01  # shared pages counted once
    assert 0 < serve["rank_p50_ms"] <= serve["rank_p99_ms"]
    assert result["targets"]["server_startup_s"]["limit"] == scale.TARGET_STARTUP_S
    assert "| scale | " in stdout


def test_random_content_features_are_the_features_step_without_the_encoder(
    tiny_dataset_dir: Path, tmp_path: Path
) -> None:
    """Same files and statistics as the features step, unit random vectors, said so."""
    import json

    import numpy as np
    import pandas as pd

    from benchmarks import random_features
    from core import schema
    from training import features

    real_embed = features.embed_texts
    try:
        random_features.main(["--data", str(tiny_dataset_dir), "--out", str(tmp_path)])
    finally:
        features.embed_texts = real_embed
    items = pd.read_parquet(tmp_path / schema.ITEM_FEATURES_FILE)
    vectors = np.stack(items[schema.CONTENT_VEC].to_numpy())
    assert vectors.shape[1] == random_features.DIM
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    summary = json.loads((tmp_path / schema.FEATURES_SUMMARY_FILE).read_text())
    assert summary["encoder"].startswith("random") and summary["texts_cached"] == 0
    assert (tmp_path / schema.USER_FEATURES_FILE).exists()
