"""Model hot swap (serving.modelswap): a new export behind ``--model`` is checked and
swapped in under load with no failed request; a broken one is refused and the old model
serves on.

Two exports of the tiny run: ``run-a`` (the session's tiny model) and ``run-b`` (its
weights scaled by 1.25 and exported again: another version, other scores). ``--model`` is
a symlink flipped between them. One real server process (``--processes 1``, SIGHUP) runs
for the module; the watch (``--model-watch-s``) and the swap logic run in-process.

    pytest tests/test_serving_hotswap.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from prometheus_client import REGISTRY

from core import contract
from serving.api.tailrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.errors import ConfigError
from serving.features import FeatureClient
from serving.inference import Model
from serving.itemtable import ItemTable, vocab_digest
from serving.modelswap import (
    PENDING,
    REFUSED,
    SWAPPED,
    UNCHANGED,
    ExportStamp,
    ModelSlot,
    check_at_start,
)
from serving.ranker import RankArgs
from tests.fixtures.serving import scrape_metrics, serving_config, started_server
from tests.test_serving_shutdown import ROOT, free_port, wait_serving
from training.export import export_run

pytestmark = pytest.mark.integration
TIMEOUT = 10.0
HOUR_AGO = time.time() - 3600


@dataclass
class Exports:
    root: Path
    a: Path
    b: Path
    version_a: str
    version_b: str
    user: str  # a user both models and the store know
    items: list[str]


def point(link: Path, target: Path) -> None:
    """Flip ``link`` to ``target`` atomically (a new link renamed over the old one)."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def age(run_dir: Path) -> None:
    """Make every file an hour old: an export written long ago, not one being written."""
    for path in run_dir.iterdir():
        os.utime(path, (HOUR_AGO, HOUR_AGO))


def reseal(run_dir: Path) -> None:
    """Record the files' current digests in the manifest (an export that is complete but
    whose content is broken in another way)."""
    path = run_dir / contract.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    for name in manifest["files"]:
        file = run_dir / name
        manifest["files"][name] = {
            "sha256": contract.file_digest(file),
            "bytes": file.stat().st_size,
        }
    path.write_text(json.dumps(manifest))


def version_of(run_dir: Path) -> str:
    return json.loads((run_dir / contract.MANIFEST_FILE).read_text())["model_version"]


@pytest.fixture(scope="module")
def exports(tiny_model_dir: Path, tiny_features_dir: Path, tmp_path_factory) -> Exports:
    root = tmp_path_factory.mktemp("hotswap")
    a, b = root / "run-a", root / "run-b"
    shutil.copytree(tiny_model_dir, a)
    shutil.copytree(tiny_model_dir, b)
    payload = torch.load(b / "checkpoint.pt", map_location="cpu", weights_only=True)
    for tensor in payload["state_dict"].values():
        if tensor.is_floating_point():
            tensor.mul_(1.25)
    torch.save(payload, b / "checkpoint.pt")
    export_run(b, features_dir=tiny_features_dir)
    age(b)
    vocab = json.loads((a / contract.VOCAB_FILE).read_text())
    return Exports(root, a, b, version_of(a), version_of(b), vocab["users"][0], vocab["items"][:12])


def broken_copy(exports: Exports, name: str, breaks: Callable[[Path], None]) -> Path:
    """A copy of run-b broken by ``breaks``, its files an hour old."""
    run_dir = exports.root / name
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(exports.b, run_dir)
    breaks(run_dir)
    age(run_dir)
    return run_dir


def rank_request(exports: Exports) -> ranking_pb2.RankRequest:
    return ranking_pb2.RankRequest(user_id=exports.user, candidate_ids=exports.items)


class Load:
    """Rank calls from several threads until stopped; every reply is kept as
    (model_version, ((item, click probability), ...)) per thread."""

    def __init__(
        self, stub: ranking_pb2_grpc.RankingServiceStub, request: ranking_pb2.RankRequest,
        threads: int = 4,
    ) -> None:  # fmt: skip
        self.stub, self.request, self.stop = stub, request, threading.Event()
        self.replies: list[list[tuple]] = [[] for _ in range(threads)]
        self.errors: list[grpc.StatusCode] = []
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def _run(self, i: int) -> None:
        stub = self.stub
        while not self.stop.is_set():
            try:
                reply = stub.Rank(self.request, timeout=TIMEOUT)
            except grpc.RpcError as exc:
                self.errors.append(exc.code())
                continue
            scores = tuple((it.item_id, round(it.click_probability, 5)) for it in reply.items)
            self.replies[i].append((reply.model_version, scores))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=TIMEOUT + 5)

    def wait_for(self, version: str, timeout_s: float = 30.0) -> None:
        """Until some reply came from ``version``, then a little longer."""
        deadline = time.monotonic() + timeout_s
        while not any(r and r[-1][0] == version for r in self.replies):
            assert time.monotonic() < deadline, f"no reply from {version} in {timeout_s}s"
            time.sleep(0.05)
        time.sleep(0.3)

    def check_switch(self, old: str, new: str) -> None:
        """No failed call; each thread saw old, then new, never old again; every reply of
        one version has the same scores, and the two versions' scores differ."""
        assert not self.errors, f"failed calls during the swap: {self.errors[:5]}"
        scores: dict[str, set] = {old: set(), new: set()}
        for replies in self.replies:
            versions = [v for v, _ in replies]
            assert versions and set(versions) <= {old, new}
            first_new = versions.index(new) if new in versions else len(versions)
            assert versions == [old] * first_new + [new] * (len(versions) - first_new)
            for version, items in replies:
                scores[version].add(items)
        assert len(scores[old]) == 1 and len(scores[new]) == 1, "one version, several scorings"
        assert scores[old] != scores[new]


# --- the real server process: SIGHUP ---------------------------------------------------------
@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    metrics_port: int
    link: Path
    log_path: Path

    stub: ranking_pb2_grpc.RankingServiceStub

    def rank(self, request: ranking_pb2.RankRequest) -> ranking_pb2.RankResponse:
        return self.stub.Rank(request, timeout=TIMEOUT)

    def scrape(self) -> dict[str, float]:
        return scrape_metrics(self.metrics_port, TIMEOUT)

    def wait_log(self, event: str, count: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.log_path.read_text().count(event) < count:
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{event} not logged {count} times"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def server(tiny_feature_repo: Path, exports: Exports) -> Iterator[Server]:
    link = exports.root / "current"
    point(link, exports.a)
    port, metrics_port = free_port(), free_port()
    argv = [sys.executable, "-m", "serving", "--repo", str(tiny_feature_repo), "--model",
            str(link), "--host", "127.0.0.1", "--port", str(port), "--processes", "1",
            "--metrics-port", str(metrics_port), "--no-event-log", "--workers", "4",
            "--grace-s", "1"]  # fmt: skip
    log_path = exports.root / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(argv, cwd=ROOT, stderr=log_file, stdout=log_file, env=env)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        wait_serving(channel, proc)
        stub = ranking_pb2_grpc.RankingServiceStub(channel)
        yield Server(proc, port, metrics_port, link, log_path, stub)
    finally:
        channel.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_sighup_swaps_the_model_under_load_without_a_failed_request(
    server: Server, exports: Exports
) -> None:
    point(server.link, exports.a)
    assert server.rank(rank_request(exports)).model_version == exports.version_a
    with Load(server.stub, rank_request(exports)) as load:
        time.sleep(0.3)
        point(server.link, exports.b)
        server.proc.send_signal(signal.SIGHUP)
        load.wait_for(exports.version_b)
    load.check_switch(exports.version_a, exports.version_b)
    assert "event=model_swapped" in server.log_path.read_text()
    scraped = server.scrape()
    assert scraped['tailrank_model_swaps_total{result="ok"}'] == 1
    info = {k: v for k, v in scraped.items() if k.startswith("tailrank_model_info{")}
    new = next(k for k in info if f'version="{exports.version_b}"' in k)
    assert info.pop(new) == 1 and not any(info.values())  # the old version: gone (or 0)


def test_broken_export_is_refused_and_the_old_model_serves_on(
    server: Server, exports: Exports
) -> None:
    serving = server.rank(rank_request(exports)).model_version
    refused = server.scrape().get('tailrank_model_swaps_total{result="refused"}', 0)
    truncated = broken_copy(
        exports, "run-truncated", lambda d: (d / "model.onnx").write_bytes(b"\x08\x07onnx")
    )
    point(server.link, truncated)
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log("event=model_swap_refused", 1)
    log_text = server.log_path.read_text()
    assert re.search(r"event=model_swap_refused .*model.onnx .*differs from its manifest", log_text)
    assert server.rank(rank_request(exports)).model_version == serving
    scraped = server.scrape()
    assert scraped['tailrank_model_swaps_total{result="refused"}'] == refused + 1
    info = {k: v for k, v in scraped.items() if k.startswith("tailrank_model_info{")}
    assert [k for k, v in info.items() if v == 1] == [
        next(k for k in info if f'version="{serving}"' in k)
    ]


# --- in process: the watch, and the swap logic ------------------------------------------------
def test_watch_swaps_in_a_new_export_without_a_signal(
    tiny_feature_repo: Path, exports: Exports
) -> None:
    link = exports.root / "current-watched"
    point(link, exports.a)
    config = serving_config(tiny_feature_repo, link, model_watch_s=0.2)
    with started_server(config) as (stub, servicer):
        assert stub.Rank(rank_request(exports), timeout=TIMEOUT).model_version == exports.version_a
        with Load(stub, rank_request(exports), threads=3) as load:
            time.sleep(0.3)
            point(link, exports.b)
            load.wait_for(exports.version_b, timeout_s=10)
        load.check_switch(exports.version_a, exports.version_b)
        assert servicer.model.version == exports.version_b


@pytest.fixture(scope="module")
def features(tiny_feature_repo: Path, exports: Exports) -> FeatureClient:
    dim = json.loads((exports.a / contract.MANIFEST_FILE).read_text())["content_dim"]
    return FeatureClient(tiny_feature_repo, dim)


def new_slot(features: FeatureClient, link: Path, target: Path) -> ModelSlot:
    """A slot serving ``target`` through ``link``, with its item table loaded."""
    point(link, target)
    slot = ModelSlot(serving_config(features.repo, link), features, Model(link.resolve()))
    slot.refresh_table(lambda m: features.build_table(m.item_ids))
    return slot


def refusals() -> float:
    return REGISTRY.get_sample_value("tailrank_model_swaps_total", {"result": "refused"}) or 0.0


def rank_args(exports: Exports) -> RankArgs:
    return RankArgs(exports.user, exports.items, 0, 0.1, "t", False)


def test_a_request_holding_the_old_bundle_finishes_on_it(
    features: FeatureClient, exports: Exports
) -> None:
    link = exports.root / "current-unit"
    slot = new_slot(features, link, exports.a)
    old = slot.current  # what a request in flight holds
    before = old.ranker.rank(rank_args(exports))
    point(link, exports.b)
    assert slot.check() == SWAPPED
    new = slot.current
    assert (old.model.version, new.model.version) == (exports.version_a, exports.version_b)
    after_old = old.ranker.rank(rank_args(exports))  # the old bundle still works, unchanged
    np.testing.assert_array_equal(after_old.prob, before.prob)
    assert not np.allclose(new.ranker.rank(rank_args(exports)).prob, before.prob)
    assert new.ranker.table is new.table and new.table.vocab == vocab_digest(new.model.item_ids)
    assert slot.check() == UNCHANGED  # the same files: nothing to do
    os.utime(exports.b / contract.MANIFEST_FILE, (HOUR_AGO, HOUR_AGO + 1))  # touched only
    assert slot.check() == UNCHANGED and slot.current.model is new.model


def _rename_input(run_dir: Path) -> None:
    graph = onnx.load(str(run_dir / "model.onnx"))
    for value in graph.graph.input:
        if value.name == "item_count":
            value.name = "item_counts"
    for node in graph.graph.node:
        node.input[:] = ["item_counts" if x == "item_count" else x for x in node.input]
    onnx.save(graph, str(run_dir / "model.onnx"))
    reseal(run_dir)


def _nan_weights(run_dir: Path) -> None:
    graph = onnx.load(str(run_dir / "model.onnx"))
    for i, init in enumerate(graph.graph.initializer):
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32:
            nan = numpy_helper.from_array(np.full_like(array, np.nan), init.name)
            graph.graph.initializer[i].CopyFrom(nan)
    onnx.save(graph, str(run_dir / "model.onnx"))
    reseal(run_dir)


def _other_probe(run_dir: Path) -> None:
    feed, logit, prob = contract.read_probe(run_dir)
    contract.save_probe(run_dir / contract.PROBE_FILE, feed, logit + 0.5, prob)
    reseal(run_dir)


BROKEN = {
    "no-manifest": (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
    "truncated-onnx": (
        lambda d: (d / "model.onnx").write_bytes((d / "model.onnx").read_bytes()[:500]),
        "model.onnx .* differs from its manifest entry",
    ),
    "wrong-input-name": (_rename_input, "input 'item_count' is missing"),
    "nan-outputs": (_nan_weights, "non-finite scores"),
    "probe-mismatch": (_other_probe, "probe feed differ from the export's"),
    "no-digests": (
        lambda d: (d / "manifest.json").write_text(
            json.dumps({**json.loads((d / "manifest.json").read_text()), "files": None})
        ),
        "does not list sha256 digests",
    ),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_each_kind_of_broken_export_is_refused(
    features: FeatureClient, exports: Exports, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    breaks, reason = BROKEN[kind]
    link = exports.root / "current-broken"
    slot = new_slot(features, link, exports.a)
    serving = slot.current
    point(link, broken_copy(exports, f"run-{kind}", breaks))
    counted = refusals()
    assert slot.check() == REFUSED
    assert slot.current is serving  # the old bundle serves on
    assert refusals() == counted + 1
    assert re.search(reason, caplog.text), caplog.text[-2000:]
    assert slot.check() == UNCHANGED and refusals() == counted + 1  # the watch: not again
    assert slot.check(force=True) == REFUSED and refusals() == counted + 2  # SIGHUP: again


def test_an_export_being_written_is_waited_for_not_refused(
    features: FeatureClient, exports: Exports
) -> None:
    link = exports.root / "current-pending"
    slot = new_slot(features, link, exports.a)
    run_dir = exports.root / "run-in-progress"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(exports.b, run_dir)
    (run_dir / "model.onnx").write_bytes(b"half an onnx file")  # just written, manifest old
    point(link, run_dir)
    counted = refusals()
    assert slot._check_once(force=False) == PENDING  # noqa: SLF001 (one look, no wait)
    assert refusals() == counted and slot.current.model.version == exports.version_a
    shutil.copy2(exports.b / "model.onnx", run_dir / "model.onnx")  # the writer finishes
    assert slot.check() == SWAPPED and slot.current.model.version == exports.version_b


def test_stamp_follows_the_link_and_the_files(exports: Exports) -> None:
    link = exports.root / "current-stamp"
    point(link, exports.a)
    first = ExportStamp.of(link)
    assert first.path == exports.a.resolve() and first == ExportStamp.of(link)
    names = [name for name, *_ in first.files]
    assert {contract.MANIFEST_FILE, contract.ONNX_FILE, contract.PROBE_FILE} <= set(names)
    point(link, exports.b)
    assert ExportStamp.of(link).path == exports.b.resolve()


def test_item_table_is_indexed_again_for_another_vocabulary() -> None:
    table = ItemTable(
        ["x", "y", "z"], np.ones((3, 2), np.float32), np.array([1, 2, 3], np.float32),
        np.array([False, True, False]), np.array([1, 2, 0]), vocab=vocab_digest(["x", "y"]),
    )  # fmt: skip
    assert table.for_vocab(["x", "y"]) is table  # built for it: nothing to do
    other = table.for_vocab(["z", "x"])
    assert other.vocab_idx.tolist() == [2, 0, 1] and other.vocab == vocab_digest(["z", "x"])
    assert other.content is table.content and other.count is table.count  # shared, not copied
    assert table.vocab_idx.tolist() == [1, 2, 0]  # the old table is untouched


def test_start_up_checks_digests_and_probe_but_still_starts_an_older_export(
    exports: Exports, caplog: pytest.LogCaptureFixture
) -> None:
    dim = json.loads((exports.a / contract.MANIFEST_FILE).read_text())["content_dim"]
    damaged = broken_copy(exports, "run-start-probe", _other_probe)
    with pytest.raises(ConfigError, match="probe feed differ"):
        check_at_start(Model(damaged), dim)
    older = broken_copy(
        exports, "run-start-old",
        lambda d: (d / "manifest.json").write_text(
            json.dumps({k: v for k, v in json.loads((d / "manifest.json").read_text()).items()
                        if k != "files"})
        ),
    )  # fmt: skip
    check_at_start(Model(older), dim)  # exported before digests: warm-up only, a warning
    assert "event=model_unverified" in caplog.text
