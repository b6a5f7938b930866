"""Evaluate a trained run and the baselines on the same split (DESIGN.md protocol).

Run::

    python -m training.evaluate --run artifacts/movielens-100k [--cold-items 0.1]

after `python -m training.train --mode eval --out artifacts/<name> ...`: training never
evaluates, this is the caller's next step (a deploy-mode run is evaluated on its
early-stopping holdout). Ranking is over ALL catalogue items (items without training
interactions are scored through the unknown row plus their content) minus each user's
train and validation items. The baselines of `training.baselines` are fitted on the same
[all users, all catalogue items] train matrix; one that cannot run at this size (EASE
above `EASE_MAX_ITEMS` items) is logged and reported as skipped, with the reason.
Every model is scored and ranked in chunks of `eval_batch_users` users x the whole
catalogue (the fusion model in `eval_pairs` pairs per forward pass, `training.scoring`),
so memory is bounded by chunk x catalogue, never users x catalogue; what a pass costs at
100k and 1M items is in docs/BENCHMARKS.md (`python -m benchmarks.eval_cost`).
The fusion model is also reported after serving's long-tail re-ranking (`core.rerank`)
at each tail weight of ``RERANK_WEIGHTS``, and once more with the user's validation
interaction appended to the history it reads at test time (``FUSION_LATEST``: the same
model and weights; DESIGN.md's protocol builds histories from train only, but a sequential
model's published figures, and the server, feed the whole past). Each history variant
scores the catalogue once: the re-ranking rows re-rank those scores (``RerankSweep``, a
hook of ``evaluate_scorer``), so the fusion model's ``eval_seconds`` includes them.
Reported per model at K: HR, NDCG, MRR, TailHR, HeadHR, APLT, Coverage, Gini, ARP
(`training.metrics.RankingAccumulator`); AUC and LogLoss on the test positives against
`negatives` uniformly drawn unseen items each (models with a probability output);
Precision/Recall/F1@K on {validation, test} items, excluding train items only.

`--cold-items F` also trains a copy of the run with a seeded F share of catalogue items
hidden from training (into <run>/cold-items-F/) and reports ColdHR@K, the HR over test
cases whose target is a hidden item. Writes metrics.json, metrics.md and metrics.png
(accuracy against tail exposure) beside the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from core import rerank
from core.files import write_bytes_atomic, write_json_atomic
from training import dataset as ds
from training.baselines import TooLarge, default_baselines
from training.checkpoint import CheckpointError, load_run, run_data
from training.config import TrainConfig
from training.metrics import RankingAccumulator, ctr_metrics, set_metrics_at_k
from training.scoring import ProbaFn, Scorer, fusion_scorers
from training.train import train

log = logging.getLogger(__name__)
FUSION = "FusionCTR"
# the same model, its test-time history including the validation interaction
FUSION_LATEST = f"{FUSION} (history incl. valid)"
# tail weights λ of serving's re-ranking rule evaluated offline (0 = the model alone)
RERANK_WEIGHTS = (0.1, 0.2, 0.3, 0.5)
# a model's only report entry when it cannot run at this size: {SKIPPED: the reason}
SKIPPED = "skipped"
# sees each chunk evaluate_scorer ranks: (users [u], targets [u], scores [u, n_catalogue])
ChunkHook = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


def ctr_pairs(data: ds.TrainingData, holdout: ds.Holdout, negatives: int, seed: int):
    """Per test case: its target and `negatives` uniformly drawn non-excluded items."""
    rng = np.random.default_rng(seed)
    items = np.empty((len(holdout.users), negatives + 1), dtype=np.int64)
    for row, user in enumerate(holdout.users):
        seen = set(holdout.exclude[user].indices.tolist()) | {int(holdout.items[row])}
        draws = rng.integers(0, data.n_catalogue, size=4 * negatives + 16)
        pool = [int(i) for i in draws if int(i) not in seen][:negatives]
        pool += [int(holdout.items[row])] * (negatives - len(pool))  # tiny catalogues only
        items[row] = [holdout.items[row], *pool]
    labels = np.zeros(items.shape, dtype=np.float64)
    labels[:, 0] = 1.0
    return items, labels


def evaluate_scorer(
    score: Scorer,
    data: ds.TrainingData,
    holdout: ds.Holdout,
    config: TrainConfig,
    proba: ProbaFn | None,
    hooks: Sequence[ChunkHook] = (),
) -> dict[str, float]:
    """All protocol metrics of one scorer on one holdout. Each ``hook`` sees every chunk's
    (users, targets, scores) too, so more metrics of the same scores (``RerankSweep``)
    need no second scoring pass over the catalogue."""
    k, chunk = config.k, config.eval_batch_users
    acc = RankingAccumulator(data.train_counts, data.is_tail, k=k)
    pair_items, pair_labels = ctr_pairs(data, holdout, config.negatives, config.seed)
    valid_item = dict(zip(data.valid.users.tolist(), data.valid.items.tolist(), strict=True))
    cold_hits, cold_cases, set_sums, set_users, probs = 0, 0, {}, 0, []
    for start in range(0, len(holdout.users), chunk):
        rows = np.arange(start, min(start + chunk, len(holdout.users)))
        users, targets = holdout.users[rows], holdout.items[rows]
        scores = np.asarray(score(users), dtype=np.float32)
        cold = data.hidden_items[targets]
        cold_cases += int(cold.sum())
        cold_hits += add_counting_cold(acc, scores, targets, holdout.exclude[users], cold)
        for hook in hooks:
            hook(users, targets, scores)
        if proba is not None:
            probs.append(proba(np.repeat(users, pair_items.shape[1]), pair_items[rows].ravel()))
        if data.test is not None and holdout is data.test:
            sets = [np.array([valid_item[u], t]) for u, t in zip(users, targets, strict=True)]
            exclude = data.valid.exclude[users]  # train items only
            for name, value in set_metrics_at_k(scores, sets, exclude, k=k).items():
                if name.endswith(f"@{k}"):  # averages only; counts would be scaled wrongly
                    set_sums[name] = set_sums.get(name, 0.0) + value * len(rows)
            set_users += len(rows)
    result = acc.result()
    result.update({name: total / set_users for name, total in set_sums.items()})
    if set_users:
        result["n_set_users"] = float(set_users)
    if data.hidden_items.any():
        result[f"ColdHR@{k}"] = cold_hits / cold_cases if cold_cases else float("nan")
        result["n_cold_cases"] = float(cold_cases)
    if proba is not None:
        result.update(ctr_metrics(pair_labels.ravel(), np.concatenate(probs)))
    return result


def add_counting_cold(
    acc: RankingAccumulator,
    scores: np.ndarray,
    targets: np.ndarray,
    exclude: sp.spmatrix,
    cold: np.ndarray,
) -> int:
    """Add a chunk to ``acc``; return how many of its ``cold`` (hidden-item) targets rank
    in the top K, by the accumulator's own rank rule (``training.metrics.target_ranks``)."""
    ranks = acc.add(scores, targets, exclude)
    return int((ranks < acc.k)[cold].sum())


def histories_with_validation(data: ds.TrainingData) -> np.ndarray:
    """[U, L] training histories with each user's validation item appended (the oldest
    item drops out): what the model sees at the test interaction when its input is the
    user's whole past, as the server's online store gives it."""
    hist = data.histories.copy()
    users = data.valid.users
    hist[users, :-1] = hist[users, 1:]
    hist[users, -1] = data.valid.items
    return hist


def user_tail_appetite(data: ds.TrainingData, users: np.ndarray) -> np.ndarray:
    """[u, 1] P(tail | user) from each user's (train) history, as the server computes it."""
    hist = data.histories[users]
    real = hist != data.pad
    return rerank.tail_appetite(data.is_tail[np.clip(hist, 0, data.n_catalogue - 1)], real)[:, None]


class RerankSweep:
    """Ranking metrics of serving's long-tail re-ranking (core.rerank) applied to the
    fusion model's click probabilities over the full catalogue, one row per λ in
    ``RERANK_WEIGHTS``: what the tail gains and what accuracy it costs. A hook of
    ``evaluate_scorer``: it re-ranks the chunks that scorer's pass already scored."""

    def __init__(self, data: ds.TrainingData, holdout: ds.Holdout, config: TrainConfig) -> None:
        self.data, self.holdout, self.k = data, holdout, config.k
        self.accs = {
            w: RankingAccumulator(data.train_counts, data.is_tail, k=config.k)
            for w in RERANK_WEIGHTS
        }
        self.cold_hits = dict.fromkeys(RERANK_WEIGHTS, 0)

    def __call__(self, users: np.ndarray, targets: np.ndarray, scores: np.ndarray) -> None:
        """Re-rank one chunk of logits at every λ."""
        data = self.data
        prob = expit(np.asarray(scores, dtype=np.float64))
        p_tail, cold = user_tail_appetite(data, users), data.hidden_items[targets]
        exclude = self.holdout.exclude[users]
        for weight, acc in self.accs.items():
            reranked, _ = rerank.rerank_scores(prob, data.is_tail, weight, p_tail)
            self.cold_hits[weight] += add_counting_cold(acc, reranked, targets, exclude, cold)

    def results(self, label: str) -> dict[str, dict]:
        """``{"<label>+rerank λ=<w>": metrics}`` over every chunk seen."""
        out = {}
        n_cold = int(self.data.hidden_items[self.holdout.items].sum())
        for weight, acc in self.accs.items():
            out[f"{label}+rerank λ={weight:g}"] = result = acc.result()
            if n_cold:
                result[f"ColdHR@{self.k}"] = self.cold_hits[weight] / n_cold
                result["n_cold_cases"] = n_cold
        return out


def evaluate_models(model, data: ds.TrainingData, config: TrainConfig) -> dict[str, dict]:
    """The fusion model and every baseline, on the test split (valid in deploy mode)."""
    holdout = data.test if data.test is not None else data.valid
    results: dict[str, dict] = {}
    started = time.perf_counter()
    score, proba = fusion_scorers(model, data, config)
    sweep = RerankSweep(data, holdout, config)
    results[FUSION] = evaluate_scorer(score, data, holdout, config, proba, hooks=[sweep])
    results[FUSION]["eval_seconds"] = round(time.perf_counter() - started, 2)
    results.update(sweep.results(FUSION))
    if data.test is not None:  # eval mode: also score the test with the validation item known
        latest, _ = fusion_scorers(model, data, config, histories_with_validation(data))
        sweep = RerankSweep(data, holdout, config)
        results[FUSION_LATEST] = evaluate_scorer(latest, data, holdout, config, None, [sweep])
        results.update(sweep.results(FUSION_LATEST))
    train, content = data.train_matrix(), data.content[:-1]
    for baseline in default_baselines(seed=config.seed):
        started = time.perf_counter()
        try:
            baseline.fit(train, content)
        except TooLarge as exc:  # e.g. EASE's dense I x I matrix above EASE_MAX_ITEMS
            log.warning("%s skipped: %s", baseline.name, exc)
            results[baseline.name] = {SKIPPED: str(exc)}
            continue
        fit_seconds = time.perf_counter() - started
        proba = getattr(baseline, "predict_proba", None)
        results[baseline.name] = evaluate_scorer(baseline.score, data, holdout, config, proba)
        results[baseline.name]["fit_seconds"] = round(fit_seconds, 2)
        log.info("%s: %s", baseline.name, _brief(results[baseline.name], config.k))
    log.info("%s: %s", FUSION, _brief(results[FUSION], config.k))
    return results


def _brief(metrics: dict, k: int) -> str:
    if SKIPPED in metrics:
        return f"{SKIPPED}: {metrics[SKIPPED]}"
    names = (f"HR@{k}", f"NDCG@{k}", f"TailHR@{k}", f"ColdHR@{k}")
    return " ".join(f"{n} {metrics[n]:.4f}" for n in names if n in metrics)


def write_reports(run_dir: Path, report: dict) -> None:
    """metrics.json, metrics.md and metrics.png beside the model (each atomically)."""
    write_json_atomic(run_dir / "metrics.json", report)
    write_bytes_atomic(run_dir / "metrics.md", markdown_table(report).encode())
    write_bytes_atomic(run_dir / "metrics.png", tail_plot(report))


def markdown_table(report: dict) -> str:
    """One row per model, one column per metric."""
    k = report["k"]
    names = ["HR", "NDCG", "MRR", "TailHR", "HeadHR", "APLT", "Coverage", "Gini", "ARP"]
    names += ["Precision", "Recall", "F1", "ColdHR"]
    columns = [f"{n}@{k}" for n in names] + ["AUC", "LogLoss"]
    present = [c for c in columns if any(c in m for m in report["models"].values())]
    lines = [
        f"# Evaluation of {report['run']} ({report['split']} split, mode {report['mode']})",
        "",
        f"{report['n_cases']} test cases, {report['n_items']} catalogue items, full ranking.",
        "",
        "| model | " + " | ".join(present) + " |",
        "| --- |" + " ---: |" * len(present),
    ]
    skipped = {name: m[SKIPPED] for name, m in report["models"].items() if SKIPPED in m}
    for name, metrics in report["models"].items():
        cells = [_cell(metrics.get(c)) for c in present]
        if name in skipped:
            cells = [SKIPPED] + ["-"] * (len(present) - 1)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", *(f"{name} {SKIPPED}: {why}" for name, why in skipped.items())]
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4f}"


def tail_plot(report: dict) -> bytes:
    """PNG: NDCG@K against APLT@K and HR@K against TailHR@K, one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    k = report["k"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    pairs = ((f"APLT@{k}", f"NDCG@{k}"), (f"TailHR@{k}", f"HR@{k}"))
    for ax, (x, y) in zip(axes, pairs, strict=True):
        for name, m in report["models"].items():
            if SKIPPED in m:
                continue
            ax.scatter(m.get(x, np.nan), m.get(y, np.nan), s=40)
            ax.annotate(name, (m.get(x, np.nan), m.get(y, np.nan)), fontsize=8)
        ax.set_xlabel(f"{x} (tail exposure)" if "APLT" in x else f"{x} (tail accuracy)")
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{report['run']}: accuracy vs long tail ({report['split']} split)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def cold_item_run(run_dir: Path, payload: dict, fraction: float, users: int = 0) -> dict:
    """Train a copy of the run with `fraction` of items hidden; evaluate it fully."""
    config = TrainConfig.from_dict(payload["config"])
    config = dataclasses.replace(config, cold_items=fraction, mode="eval")
    cold_dir = run_dir / f"cold-items-{fraction:g}"
    train(config, Path(payload["data_dir"]), Path(payload["features_dir"]), cold_dir)
    return evaluate_run(cold_dir, users=users)


def evaluate_run(run_dir: Path, cold_items: float = 0.0, users: int = 0) -> dict:
    """Evaluate a run (and optionally a cold-item copy); write and return the report.
    ``users`` > 0 evaluates a seeded sample of that many holdout cases (large data sets:
    the report's ``n_cases`` and ``sampled_from`` say so)."""
    model, payload, _ = load_run(run_dir)
    data = run_data(payload)
    config = TrainConfig.from_dict(payload["config"])
    holdout = data.test if data.test is not None else data.valid
    every = len(holdout.users)
    holdout = ds.sample_holdout(holdout, users, config.seed + 2)
    if data.test is not None:
        data.test = holdout
    else:
        data.valid = holdout
    report = {
        "run": run_dir.name,
        "mode": config.mode,
        "split": "test" if data.test is not None else "test (deploy early-stopping holdout)",
        "k": config.k,
        "n_cases": len(holdout.users),
        "sampled_from": every,
        "n_items": data.n_catalogue,
        "n_tail_items": int(data.is_tail.sum()),
        "cold_items": config.cold_items,
        "models": evaluate_models(model, data, config),
    }
    if cold_items > 0:
        cold = cold_item_run(run_dir, payload, cold_items, users)
        report["cold_run"] = {
            "fraction": cold_items,
            "dir": f"cold-items-{cold_items:g}",
            "models": {
                name: {m: v for m, v in metrics.items() if m.split("@")[0] in _COLD_KEYS}
                for name, metrics in cold["models"].items()
            },
        }
    write_reports(run_dir, report)
    return report


_COLD_KEYS = ("ColdHR", "HR", "NDCG", "TailHR", "n_cold_cases", SKIPPED)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="run dir with checkpoint.pt")
    parser.add_argument(
        "--cold-items", type=float, default=0.0, help="also train/evaluate with this share hidden"
    )
    parser.add_argument(
        "--users", type=int, default=0,
        help="evaluate a seeded sample of this many test users (0 = all; large data sets)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not 0.0 <= args.cold_items < 1.0:
        parser.error("--cold-items must be in [0, 1)")
    if args.users < 0:
        parser.error("--users must be >= 0 (0 = every test user)")
    try:
        report = evaluate_run(args.run, args.cold_items, args.users)
    except CheckpointError as exc:
        raise SystemExit(f"evaluation failed: {exc}") from None
    print(json.dumps({name: _brief(m, report["k"]) for name, m in report["models"].items()}))


if __name__ == "__main__":
    main()
