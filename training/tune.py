"""Hyper-parameter search with Optuna, on the validation split only.

    python -m training.tune --data data/movielens-100k \
        --features data/movielens-100k/features_eval --trials 30 --timeout 3600 \
        --out artifacts/tune
    python -m training.train --config artifacts/tune/best_config.json --data ... --out ...

Each trial trains an eval-mode run (``training.train.train``: fit on train, early stopping
on the validation split) with settings drawn by Optuna's TPE sampler from ``SPACE`` and
scores it by its best validation NDCG@10; the test split is never read. The study lives
in SQLite (``<out>/study.db``): a second call with the same ``--out`` and ``--study``
resumes it, and ``optuna-dashboard sqlite:///<out>/study.db`` shows it. After every trial
``<out>/best_config.json`` holds the whole TrainConfig of the best trial so far (the
defaults plus the tuned values, ``mode`` back to the caller's), which ``training.train
--config`` reads; ``<out>/trials.csv`` lists every trial. Flags that are not tuned
(``--epochs``, ``--seed``...) fix the base config of every trial.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.files import write_json_atomic
from training.config import TrainConfig, add_config_arguments, config_from_args

log = logging.getLogger(__name__)

OBJECTIVE = "valid_NDCG@10"
BEST_FILE = "best_config.json"
STUDY_FILE = "study.db"


def _categorical(*choices: Any) -> Callable:
    return lambda trial, name: trial.suggest_categorical(name, list(choices))


def _log_float(low: float, high: float) -> Callable:
    return lambda trial, name: trial.suggest_float(name, low, high, log=True)


def _float(low: float, high: float) -> Callable:
    return lambda trial, name: trial.suggest_float(name, low, high)


# The settings a trial draws. Chosen for what moved NDCG@10 in the hand-tuning recorded in
# docs/BENCHMARKS.md (width, learning rate, the regularisers, negatives, the losses' mix);
# history length and the catalogue-softmax size stay with the data and the machine.
SPACE: dict[str, Callable] = {
    "embedding_dim": _categorical(16, 32, 64),
    "lr": _log_float(1e-3, 1e-2),
    "dropout": _float(0.0, 0.3),
    "id_dropout": _float(0.0, 0.3),
    "user_dropout": _float(0.0, 0.2),
    "negatives": _categorical(2, 4, 8),
    "catalogue_softmax": _float(0.25, 1.5),
    "attention_dim": _categorical(8, 16, 32),
    "embedding_l2": _log_float(1e-7, 1e-4),
}


def trial_config(trial, base: TrainConfig) -> TrainConfig:
    """``base`` with every ``SPACE`` setting drawn by ``trial`` (eval mode: validation
    is what early stopping and the objective read)."""
    drawn = {name: draw(trial, name) for name, draw in SPACE.items()}
    return dataclasses.replace(base, mode="eval", **drawn)


def tune(
    data_dir: Path,
    features_dir: Path,
    out: Path,
    base: TrainConfig,
    trials: int,
    timeout_s: float | None,
    study_name: str = "tailrank",
    seed: int = 0,
) -> dict[str, Any]:
    """Run (or resume) the study; write best_config.json and trials.csv; return the best
    trial's {"value", "params", "trial"}."""
    import optuna

    from training.train import train

    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(out / STUDY_FILE).resolve()}"
    study = optuna.create_study(
        study_name=study_name, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
    )  # fmt: skip

    def objective(trial) -> float:
        config = trial_config(trial, base)
        run_dir = Path(tempfile.mkdtemp(prefix=f"trial-{trial.number}-", dir=out))
        try:
            summary = train(config, data_dir, features_dir, run_dir)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)  # weights of a trial are not kept
        trial.set_user_attr("best_epoch", summary.get("best_epoch"))
        return float(summary[OBJECTIVE])

    def keep_best(study, _trial) -> None:
        best = study.best_trial
        config = dataclasses.replace(base, **best.params)  # the caller's mode, tuned values
        write_json_atomic(out / BEST_FILE, config.to_dict())
        study.trials_dataframe().to_csv(out / "trials.csv", index=False)
        log.info("best so far: trial %d, %s %.4f", best.number, OBJECTIVE, best.value)

    study.optimize(objective, n_trials=trials, timeout=timeout_s, callbacks=[keep_best],
                   show_progress_bar=True)  # fmt: skip
    best = study.best_trial
    return {"value": best.value, "params": best.params, "trial": best.number}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.tune", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", type=Path, required=True, help="canonical tables dir")
    parser.add_argument("--features", type=Path, required=True, help="eval-mode features dir")
    parser.add_argument("--out", type=Path, required=True, help="study, best config, trials")
    parser.add_argument("--trials", type=int, default=20, help="trials to run (default 20)")
    parser.add_argument("--timeout", type=float, default=None, help="stop after S seconds")
    parser.add_argument("--study", default="tailrank", help="study name in the SQLite file")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.trials < 1:
        parser.error("--trials must be >= 1")
    try:
        base = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    best = tune(args.data, args.features, args.out, base, args.trials, args.timeout,
                args.study, base.seed)  # fmt: skip
    print(f"best trial {best['trial']}: {OBJECTIVE} {best['value']:.4f} {best['params']}")
    print(f"wrote {args.out / BEST_FILE}: python -m training.train --config {args.out / BEST_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
