"""Cold items through the API: hidden from training, upserted by RPC, found from their text.

    python -m training.train --data data/movielens-100k \
        --features data/movielens-100k/features_eval --mode eval --cold-items 0.1 \
        --out artifacts/ml-cold
    python -m benchmarks.cold_upsert --run artifacts/ml-cold

The run was trained with a seeded 10% of the catalogue hidden (``--cold-items``): their
interactions are not in training, their ids not in the model's vocabulary. This benchmark
(issue 15) serves that run as a shop would have it before those products existed, then
adds them through the API, and compares the cold-item hit rate both ways:

1. offline: the run's own ColdHR@10 (``training.evaluate``'s protocol: full ranking over the
   catalogue minus each user's train and validation items, train-only histories, hidden
   items scored by their content vector and the unknown ID row);
2. served: a Feast store built by ``training.features`` from the training interactions
   without the hidden items and the catalogue without them (what the shop's store held),
   the run exported to ONNX, a real gRPC server (tail weight 0: the model's order), the
   hidden items sent with ``UpsertItems`` from the items table's columns (the text goes
   through the server's own encoder graph), then for every test case whose target is a
   hidden item one Rank over the same candidate set as offline; a hit is the target in the
   top 10.

Target: ColdHR@10 through the API equals the offline figure of the same model. Printed:
both figures, the number of cases, the cases where the two disagree, and upsert timings.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
from tqdm import tqdm

from benchmarks.synthetic import materialized_repo
from core import itemtext, schema
from serving.api.tailrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.config import ServerConfig
from training import features as features_step
from training.checkpoint import load_run, run_data
from training.config import TrainConfig
from training.evaluate import evaluate_scorer
from training.export import export_run
from training.scoring import fusion_scorers

log = logging.getLogger("benchmarks.cold_upsert")
K = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.cold_upsert",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--run", type=Path, required=True, help="an eval-mode run with --cold-items")
    p.add_argument("--batch", type=int, default=500, help="items per UpsertItems call")
    p.add_argument("--keep", type=Path, help="build the store and server files here (kept)")
    return p.parse_args(argv)


def offline_cold_hits(run: Path) -> tuple[float, dict[int, bool], dict, object]:
    """The run's ColdHR@10 as ``training.evaluate`` reports it, the hit of each cold test
    case (rank of the target among the user's candidates < 10, as the evaluation counts
    it), the run's payload and its data."""
    model, payload, _ = load_run(run)
    data = run_data(payload)
    config = TrainConfig.from_dict(payload["config"])
    if data.test is None or not data.hidden_items.any():
        raise SystemExit(f"{run}: not an eval-mode run with --cold-items: nothing to compare")
    score, _ = fusion_scorers(model, data, config)
    reported = evaluate_scorer(score, data, data.test, config, None)[f"ColdHR@{K}"]
    test, hits = data.test, {}
    for case in np.flatnonzero(data.hidden_items[test.items]):
        user, target = int(test.users[case]), int(test.items[case])
        scores = np.asarray(score(np.array([user])), dtype=np.float32)[0, : len(data.item_ids)]
        scores[test.exclude[user].indices] = -np.inf
        hits[int(case)] = int((scores > scores[target]).sum()) < K
    return reported, hits, payload, data


def shop_before(data_dir: Path, hidden: set[str], out: Path, history_len: int) -> Path:
    """The canonical tables of the shop before the hidden items existed: training
    interactions without them, the catalogue without them."""
    out.mkdir(parents=True)
    train = pd.read_parquet(data_dir / schema.TRAIN_FILE)
    keep = ~train[schema.ITEM_ID].astype(str).isin(hidden)
    train[keep].to_parquet(out / schema.INTERACTIONS_FILE)
    items = pd.read_parquet(data_dir / schema.ITEMS_FILE)
    items[~items[schema.ITEM_ID].astype(str).isin(hidden)].to_parquet(out / schema.ITEMS_FILE)
    shutil.copy2(data_dir / schema.USERS_FILE, out / schema.USERS_FILE)
    features_out = out / "features"
    features_step.build_features(out, features_out, mode="serve", history_len=history_len)
    return features_out


def feature_repo(features_dir: Path, where: Path) -> Path:
    """A materialized Feast repo over ``features_dir``'s files."""

    def copy_features(data: Path) -> None:
        for file in features_dir.iterdir():
            shutil.copy2(file, data / file.name)

    return materialized_repo(where / "feature_repo", copy_features)


def upserts(items: pd.DataFrame, hidden: list[str]) -> list[ranking_pb2.ItemUpsert]:
    """The hidden items' rows of the items table as UpsertItems messages."""
    text = features_step.text_columns(items)
    rows = items.set_index(items[schema.ITEM_ID].astype(str)).loc[hidden]
    numeric = [c for c in rows.columns if c not in text and c != schema.ITEM_ID and
               pd.api.types.is_numeric_dtype(rows[c])]  # fmt: skip
    out = []
    for item_id, row in rows.iterrows():
        out.append(
            ranking_pb2.ItemUpsert(
                item_id=item_id,
                text={c: t for c in text if (t := itemtext.as_text(row[c]))},
                numeric={c: float(row[c]) for c in numeric if pd.notna(row[c])},
            )
        )
    return out


def served_cold_hits(
    args: argparse.Namespace, data, data_dir: Path, repo: Path, model_dir: Path, work: Path
) -> tuple[dict[int, bool], list[tuple[int, float]]]:
    """UpsertItems of the hidden items, then one Rank per cold test case: its hit."""
    from serving.__main__ import build_servicer
    from serving.server import create_server

    hidden = [str(i) for i in data.item_ids[data.hidden_items]]
    items = pd.read_parquet(data_dir / schema.ITEMS_FILE)
    messages = upserts(items, hidden)
    config = ServerConfig(
        repo=repo, model=model_dir, host="127.0.0.1", port=0, metrics_port=-1, workers=2,
        event_log_url=f"sqlite:///{work / 'events.db'}", tail_weight=0.0,
        max_candidates=len(data.item_ids) + 1,
    )  # fmt: skip
    servicer = build_servicer(config)
    servicer.start()
    servicer.upserter()  # load the encoder now: the first call of a process pays ~0.3 s
    server, port = create_server(config, servicer)
    timings, hits = [], {}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ranking_pb2_grpc.RankingServiceStub(channel)
            for start in range(0, len(messages), args.batch):
                batch = messages[start : start + args.batch]
                t0 = time.perf_counter()
                stub.UpsertItems(ranking_pb2.UpsertItemsRequest(items=batch), timeout=600)
                timings.append((len(batch), time.perf_counter() - t0))
            test = data.test
            cold = np.flatnonzero(data.hidden_items[test.items])
            all_items = np.asarray(data.item_ids, dtype=object)
            for case in tqdm(cold, desc="Rank (cold cases)", unit="case"):
                user, target = int(test.users[case]), int(test.items[case])
                excluded = set(test.exclude[user].indices.tolist())
                keep = [j for j in range(len(all_items)) if j not in excluded or j == target]
                reply = stub.Rank(
                    ranking_pb2.RankRequest(
                        user_id=str(data.user_ids[user]),
                        candidate_ids=[str(all_items[j]) for j in keep], top_k=K,
                    ),
                    timeout=30,
                )  # fmt: skip
                hits[int(case)] = str(all_items[target]) in {r.item_id for r in reply.items}
    finally:
        servicer.shutting_down()
        server.stop(0).wait()
        servicer.event_log.close()
    return hits, timings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("serving").setLevel(logging.WARNING)
    reported, offline, payload, data = offline_cold_hits(args.run)
    data_dir = Path(payload["data_dir"])
    hidden = {str(i) for i in data.item_ids[data.hidden_items]}
    config = TrainConfig.from_dict(payload["config"])
    with tempfile.TemporaryDirectory(prefix="cold-upsert-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model_dir = work / "run"
        shutil.copytree(args.run, model_dir, dirs_exist_ok=True)
        export_run(model_dir)
        features_dir = shop_before(data_dir, hidden, work / "shop", config.history_len)
        repo = feature_repo(features_dir, work)
        served, timings = served_cold_hits(args, data, data_dir, repo, model_dir, work)
    n = len(served)
    agree = sum(served[c] == offline[c] for c in served)
    items_s = sum(b for b, _ in timings) / sum(t for _, t in timings)
    print(f"| ColdHR@{K} | training.evaluate | offline, per case | through the API |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| {n} cold test cases ({len(hidden)} hidden items) | {reported:.4f} | "
        f"{sum(offline.values()) / n:.4f} | {sum(served.values()) / n:.4f} |"
    )
    print(f"\ncases where the API and the offline ranking agree on the hit: {agree}/{n}")
    print(f"upserted {len(hidden)} items in {len(timings)} calls: {items_s:.0f} items/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
