"""The Makefile's plans (`make -n`) on a scratch tree of stamps: what each target would run.

Each data set keeps its own features, Feast config, online store and stamps
(feature_repo/data/<name>), so building one never makes make reuse another's; switching
the online store re-applies and re-materializes only; `make evaluate` trains on
eval-mode features, never the served ones. Files are empty stand-ins with ordered mtimes:
nothing is built, only make's decisions are read.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKEFILE = ROOT / "Makefile"
# an outer make's flags, and variables the Makefile would read from the environment
OUTER_MAKE = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "DATA", "DATASET", "STORE", "VENV")

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")


class Tree:
    """A scratch project root: the repo's definitions, an installed venv stamp, a clock."""

    def __init__(self, root: Path) -> None:
        self.root, self.clock = root, 1_700_000_000
        self.touch("pyproject.toml")
        for file in (ROOT / "feature_repo").glob("*.py"):
            self.touch(f"feature_repo/{file.name}")
        for file in (ROOT / "feature_repo").glob("*.yaml"):
            self.touch(f"feature_repo/{file.name}")
        self.touch(".venv/.installed")

    def touch(self, *paths: str) -> None:
        """Create each path (if needed) with an mtime later than every earlier one."""
        for rel in paths:
            path = self.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            self.clock += 10
            os.utime(path, (self.clock, self.clock))

    def data(self, name: str) -> None:
        self.touch(f"data/{name}/interactions.parquet")

    def served(self, name: str, store: str = "sqlite") -> None:
        """Everything `make serve DATA=<name>` leaves behind, in build order."""
        self.data(name)
        self.touch(
            f"feature_repo/data/{name}/item_features.parquet",
            f"feature_repo/data/{name}/.materialized-{store}",
            f"artifacts/{name}/checkpoint.pt",
            f"artifacts/{name}/model.onnx",
        )

    def plan(self, *args: str, ok: bool = True) -> str:
        """`make -n <args>` here: the commands make would run (stdout + stderr)."""
        env = {k: v for k, v in os.environ.items() if k not in OUTER_MAKE}
        done = subprocess.run(
            ["make", "-n", "-f", str(MAKEFILE), *args],
            cwd=self.root, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert (done.returncode == 0) is ok, done.stdout + done.stderr
        return done.stdout + done.stderr


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


def serve_line(name: str, fs_yaml: str = "feature_store.yaml") -> str:
    return f"-m serving --repo feature_repo --fs-yaml feature_repo/data/{name}/{fs_yaml}"


def test_serving_a_after_b_builds_a_features_from_a(tree: Tree) -> None:
    """The issue: after `make serve DATA=b`, `make serve DATA=a` trained on b's features."""
    tree.data("a")
    tree.served("b")  # newer than a's tables
    plan = tree.plan("serve", f"DATA={tree.root / 'src' / 'a'}")
    assert "-m training.features --data data/a --out feature_repo/data/a" in plan
    assert (
        "-m training.feast_repo --repo feature_repo --features feature_repo/data/a "
        "--template feature_repo/feature_store.yaml --name a"
    ) in plan.replace("\\\n\t", "")
    train = "-m training.train --data data/a --features feature_repo/data/a --mode deploy"
    assert train in plan
    assert serve_line("a") + " --model artifacts/a" in plan
    assert "feature_repo/data/b" not in plan and "artifacts/b" not in plan
    assert "pip install" not in plan and "-m training.data" not in plan


def test_switching_back_to_a_built_data_set_rebuilds_nothing(tree: Tree) -> None:
    tree.served("a")
    tree.served("b")  # built after a: every b file is newer than every a file
    plan = tree.plan("serve", "DATASET=a")
    assert serve_line("a") in plan
    for step in ("training.features", "training.feast_repo", "training.train", "export"):
        assert step not in plan
    assert tree.plan("serve", "DATASET=b").count("training.") == 0


def test_switching_the_store_reapplies_and_rematerializes_only(tree: Tree) -> None:
    """The README's PostgreSQL recipe: no install, data, features or training."""
    tree.served("a")
    plan = tree.plan("materialize-store", "STORE=postgres", "DATASET=a")
    commands = [line for line in plan.replace("\\\n\t", "").splitlines() if line.strip()]
    assert len(commands) == 2, plan
    assert commands[0].endswith(
        "-m training.feast_repo --repo feature_repo --features feature_repo/data/a "
        "--template feature_repo/feature_store.postgres.yaml --name a"
    )
    assert commands[1] == "touch feature_repo/data/a/.materialized-postgres"
    # before that, serving from PostgreSQL would materialize there (and train nothing)
    before = tree.plan("serve", "STORE=postgres", "DATASET=a")
    assert "feature_store.postgres.yaml --name a" in before.replace("\\\n\t", "")
    assert "training.train" not in before and "training.features" not in before
    tree.touch("feature_repo/data/a/.materialized-postgres")
    after = tree.plan("serve", "STORE=postgres", "DATASET=a")
    assert serve_line("a", "feature_store.postgres.yaml") in after
    assert "training." not in after
    # the SQLite store of the same data set is still current
    assert "training." not in tree.plan("serve", "DATASET=a")


def test_materialize_store_is_forced_even_when_current(tree: Tree) -> None:
    tree.served("a", store="postgres")
    assert "training.feast_repo" not in tree.plan("materialize", "STORE=postgres", "DATASET=a")
    assert "training.feast_repo" in tree.plan("materialize-store", "STORE=postgres", "DATASET=a")


def test_a_changed_definition_rematerializes_every_store_it_feeds(tree: Tree) -> None:
    tree.served("a")
    tree.touch("feature_repo/tailrank_repo.py")
    plan = tree.plan("serve", "DATASET=a")
    assert "training.feast_repo" in plan and "training.train" not in plan


def test_evaluate_trains_on_eval_mode_features(tree: Tree) -> None:
    tree.served("a")
    plan = tree.plan("evaluate", "DATASET=a")
    assert "-m training.features --data data/a --out data/a/features_eval --mode eval" in plan
    assert (
        "-m training.train --data data/a --features data/a/features_eval --mode eval "
        "--out artifacts/a-eval"
    ) in plan
    assert plan.rstrip().endswith("-m training.evaluate --run artifacts/a-eval")
    assert "--run-evaluation" not in plan and "feature_repo/data/a" not in plan
    tree.touch("data/a/features_eval/item_features.parquet", "artifacts/a-eval/checkpoint.pt")
    again = tree.plan("evaluate", "DATASET=a")  # trained already: evaluate only
    assert "training.train" not in again and "training.evaluate --run artifacts/a-eval" in again


def test_an_unknown_store_is_refused(tree: Tree) -> None:
    plan = tree.plan("serve", "STORE=mysql", ok=False)
    assert "STORE=mysql: no feature_repo/feature_store.mysql.yaml" in plan


def test_redis_store_materializes_and_serves_from_its_own_config(tree: Tree) -> None:
    """`make materialize-store STORE=redis`, then `make serve STORE=redis`: the Redis
    template made the data set's, its own stamp, and the server reads that config."""
    tree.served("a")
    plan = tree.plan("materialize-store", "STORE=redis", "DATASET=a").replace("\\\n\t", "")
    assert "--template feature_repo/feature_store.redis.yaml --name a" in plan
    assert "touch feature_repo/data/a/.materialized-redis" in plan
    tree.touch("feature_repo/data/a/.materialized-redis")
    after = tree.plan("serve", "STORE=redis", "DATASET=a")
    assert serve_line("a", "feature_store.redis.yaml") in after
    assert "training." not in after
