"""int8 dynamic quantization of an exported graph, and what it costs in ranking accuracy.

Used by ``python -m training.export --run artifacts/<name> --quantize int8``: the export
writes the fp32 graph, ``quantize_int8`` turns its weights into int8 (ONNX Runtime
dynamic quantization), and ``quantization_report`` ranks the run's holdout with both
graphs through ONNX Runtime, each user fed exactly as the server feeds it
(``core.contract.build_feed``), and reports HR / NDCG / TailHR at K for each and the delta.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from core import contract
from training import dataset as ds
from training.checkpoint import run_data
from training.config import TrainConfig
from training.metrics import RankingAccumulator


def quantize_int8(fp32: Path, int8: Path) -> None:
    """Write ``int8``: the graph of ``fp32`` with int8 weights (dynamic quantization)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # heavy, rarely used

    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)


def quantization_report(payload: dict, fp32: Path, int8: Path, max_users: int = 2000) -> dict:
    """Ranking metrics of the fp32 and int8 ONNX graphs on the holdout of the run whose
    checkpoint payload is ``payload`` (``training.checkpoint.load_run``)."""
    data = run_data(payload)
    config = TrainConfig.from_dict(payload["config"])
    holdout = data.test if data.test is not None else data.valid
    out: dict = {"users": min(len(holdout.users), max_users)}
    for label, path in (("fp32", fp32), ("int8", int8)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        acc = RankingAccumulator(data.train_counts, data.is_tail, k=config.k)
        for start in range(0, out["users"], config.eval_batch_users):
            rows = np.arange(start, min(start + config.eval_batch_users, out["users"]))
            users = holdout.users[rows]
            scores = np.vstack(
                [
                    _onnx_scores(session, data, users[i : i + 1], config.eval_pairs)
                    for i in range(len(users))
                ]
            )
            acc.add(scores, holdout.items[rows], holdout.exclude[users])
        result = acc.result()
        out[label] = {n: result[f"{n}@{config.k}"] for n in ("HR", "NDCG", "TailHR")}
        out[f"{label}_bytes"] = path.stat().st_size
    out["delta"] = {n: out["int8"][n] - out["fp32"][n] for n in out["fp32"]}
    return out


def _onnx_scores(
    session: ort.InferenceSession, data: ds.TrainingData, user: np.ndarray, pairs: int
) -> np.ndarray:
    """[1, n_catalogue] logits of one user: ONNX Runtime runs over ``pairs`` catalogue
    items at a time (memory bounded as in ``training.scoring``), each fed exactly as the
    server feeds a request (``core.contract.build_feed``)."""
    hist = data.histories[int(user[0])]
    hist = hist[hist != data.pad]
    out = np.empty((1, data.n_catalogue), dtype=np.float32)
    for start in range(0, data.n_catalogue, pairs):
        items = np.arange(start, min(start + pairs, data.n_catalogue))
        feed = contract.build_feed(
            user_idx=int(data.user_to_vocab[int(user[0])]),
            hist_idx=data.item_to_vocab[hist],
            hist_content=data.content[hist],
            item_idx=data.item_to_vocab[items],
            item_content=data.content[items],
            item_count=data.train_counts[items],
        )
        out[0, items] = session.run(["logit"], feed)[0]
    return out
