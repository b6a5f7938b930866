"""training.tune: an Optuna study on the validation split, kept in SQLite, resumable, and
its best config read back by ``training.train --config`` (tiny data, real training).

    pytest tests/test_tune.py
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.fixtures.model import TINY_MODEL
from training import train as train_cli
from training import tune
from training.config import TrainConfig, load_config_file

BASE = {**TINY_MODEL, "epochs": 1, "max_steps_per_epoch": 2}


def test_a_study_writes_the_best_config_and_resumes(
    tiny_dataset_dir: Path, tiny_features_dir: Path, tmp_path: Path
) -> None:
    base = TrainConfig.from_dict(BASE)  # mode deploy: what the best config must keep
    best = tune.tune(tiny_dataset_dir, tiny_features_dir, tmp_path, base, 2, None)
    assert 0.0 <= best["value"] <= 1.0 and set(best["params"]) == set(tune.SPACE)
    config = load_config_file(tmp_path / tune.BEST_FILE)
    assert config.mode == "deploy" and config.epochs == 1  # the caller's, not a trial's
    assert {k: getattr(config, k) for k in tune.SPACE} == best["params"]
    with sqlite3.connect(tmp_path / tune.STUDY_FILE) as db:
        assert db.execute("SELECT count(*) FROM trials").fetchone()[0] == 2
    tune.tune(tiny_dataset_dir, tiny_features_dir, tmp_path, base, 1, None)  # resumes
    with sqlite3.connect(tmp_path / tune.STUDY_FILE) as db:
        assert db.execute("SELECT count(*) FROM trials").fetchone()[0] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("trial-")]  # no weights kept
    assert len((tmp_path / "trials.csv").read_text().splitlines()) == 4


def test_train_reads_a_config_file_and_flags_override_it(tmp_path: Path) -> None:
    path = tmp_path / "best.json"
    path.write_text(json.dumps({**TrainConfig().to_dict(), "lr": 0.005, "embedding_dim": 64}))
    parser = train_cli.build_parser()
    argv = ["--data", "d", "--features", "f", "--out", "o", "--config", str(path)]
    config = train_cli.parse_config(parser, parser.parse_args([*argv, "--embedding-dim", "16"]))
    assert config.lr == 0.005 and config.embedding_dim == 16
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(SystemExit):  # a usage error (exit 2) naming the file
        train_cli.parse_config(parser, parser.parse_args([*argv[:6], "--config", str(bad)]))


@pytest.mark.parametrize(
    ("text", "message"),
    [("not json", "cannot read it as JSON"), ("[1]", "not a JSON object"),
     ('{"lr": 0.1, "learning_rate": 1}', "unknown config keys")],
)  # fmt: skip
def test_a_bad_config_file_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config_file(path)
