"""Training on torchrun (issue 11): 2 processes (gloo, CPU) against 1, and a dying worker.

Every test launches the real ``torchrun`` (``python -m torch.distributed.run
--standalone``) around the real ``python -m training.train`` CLI, as docs/TRAINING.md
says to, on a small seeded synthetic shop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.data import build_tiny_dataset
from training import features
from training.checkpoint import load_run

ROOT = Path(__file__).resolve().parents[1]
# big enough that validation HR@10 means something (300 users), small enough to train fast
SHOP = {"n_users": 300, "n_items": 150, "n_events": 12_000, "seed": 3}
TRAIN_FLAGS = [
    "--mode", "eval", "--epochs", "4", "--patience", "4", "--batch-size", "256",
    "--embedding-dim", "16", "--attention-dim", "8", "--mlp-dims", "32",
    "--history-len", "20", "--device", "cpu", "--num-threads", "1", "--seed", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, embedding_cache_dir: Path):
    root = tmp_path_factory.mktemp("ddp")
    data_dir = build_tiny_dataset(root / "data", **SHOP)
    features_dir = root / "features"
    features.build_features(data_dir, features_dir, mode="eval", cache_dir=embedding_cache_dir)
    return data_dir, features_dir


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _train_argv(shop, out: Path, nproc: int | None, *extra: str) -> list[str]:
    data_dir, features_dir = shop
    args = ["--data", str(data_dir), "--features", str(features_dir), "--out", str(out)]
    args += [*TRAIN_FLAGS, *extra]
    if nproc is None:
        return [sys.executable, "-m", "training.train", *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc_per_node", str(nproc), "-m", "training.train", *args]


def _run(argv: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _summary(run: Path) -> dict:
    return json.loads((run / "train_summary.json").read_text())


def test_two_processes_match_one_within_noise(shop, tmp_path: Path) -> None:
    """Same global batch, same steps, same data: validation quality within binomial noise,
    and rank 0 alone wrote a loadable run dir (and exported it with --export)."""
    solo = _run(_train_argv(shop, tmp_path / "solo", None))
    assert solo.returncode == 0, solo.stderr[-3000:]
    pair = _run(_train_argv(shop, tmp_path / "pair", 2, "--export"))
    assert pair.returncode == 0, pair.stderr[-3000:]
    one, two = _summary(tmp_path / "solo"), _summary(tmp_path / "pair")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["steps"] == two["steps"] > 0  # the global batch is split, not doubled
    valid = [load_run(tmp_path / run)[1]["valid_metrics"] for run in ("solo", "pair")]
    n = valid[0]["n_users"]
    assert n == valid[1]["n_users"] > 0.9 * SHOP["n_users"]  # rank 0 validated every case
    hr = [v["HR@10"] for v in valid]
    # two independent estimates over the same ~300 cases: 3 standard errors of a difference
    p = max(np.mean(hr), 0.05)
    assert abs(hr[0] - hr[1]) <= 3 * np.sqrt(2 * p * (1 - p) / n), hr
    assert min(hr) > 0.1  # both learned (10 of 150 items at random: ~0.07)
    assert (tmp_path / "pair" / "model.onnx").exists()
    assert (tmp_path / "pair" / "manifest.json").exists()
    assert not (tmp_path / "solo" / "model.onnx").exists()


def _worker_pids(parent: int) -> list[int]:
    """Pids of processes whose parent is `parent` (torchrun's workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            pids.append(int(entry.name))
    return pids


def test_a_dying_worker_stops_the_job_with_an_error(shop, tmp_path: Path) -> None:
    """kill -9 of one worker: torchrun stops the other and exits non-zero naming the
    failure; the run dir holds no checkpoint or a complete, loadable one."""
    run = tmp_path / "killed"
    # the large-catalogue path under DDP: sampled softmax, sparse gradients (gloo)
    argv = _train_argv(shop, run, 2, "--epochs", "500", "--patience", "500",
                       "--full-softmax-max-items", "0", "--sparse-embeddings", "on")  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (run / "config.json").exists():
            time.sleep(0.2)  # rank 0 writes config.json once training starts
        assert (run / "config.json").exists(), "training never started"
        workers = _worker_pids(proc.pid)
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "ChildFailedError" in output or "FAILED" in output, output[-3000:]
    assert "Signal 9" in output or "SIGKILL" in output, output[-3000:]
    assert not any(p for p in _worker_pids(proc.pid))  # no orphaned worker left
    if (run / "checkpoint.pt").exists():
        load_run(run)  # atomic writes: whatever is there loads
    assert not (run / "model.onnx").exists()


def test_torchrun_without_its_variables_says_how_to_launch(shop, tmp_path: Path) -> None:
    env = {**_env(), "WORLD_SIZE": "2"}
    env.pop("MASTER_ADDR", None)
    result = subprocess.run(
        _train_argv(shop, tmp_path / "bad", None), cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "torchrun --nproc_per_node" in result.stderr
