"""Model hot swap: a new export in ``--model`` is loaded, checked, then swapped in whole.

A ``Bundle`` is the model and everything built from its vocabulary: the item table whose
``vocab_idx`` column indexes that model's embeddings, and the ranker over both. It is
immutable. A request reads ``ModelSlot.current`` once, at its start, and uses only that
bundle, so the requests in flight finish on the model they started with while new ones
get the new bundle: one attribute read, no lock on the request path.

``ModelSlot.check()`` runs on SIGHUP and every ``--model-watch-s`` seconds. It resolves
``--model`` (a symlink ``current -> run-xyz`` is followed at every check) and stats the
run's files; when they differ from the export serving, it loads the new one and checks
it, in this order, before the reference is replaced:

1. the manifest reads and lists the sha256 of its graph, vocabulary and probe, and the
   files match (``core.contract.check_files``): an export still being written is not
   loaded (when its newest file is under ``SETTLE_S`` old, the check waits for it);
2. the ONNX session builds and its inputs and outputs follow the contract (as at start-up);
3. its content width is the feature store's;
4. warm-up: a user without history gets finite scores;
5. parity: the probe feed the export saved gives the outputs the export measured
   (``PROBE_TOLERANCE``), finite, probabilities in [0, 1];
6. the files did not change while 1-5 ran.

A failure keeps the old bundle serving: ``event=model_swap_refused`` is logged and
``tailrank_model_swaps_total{result="refused"}`` counted; the watch does not retry those
same files, SIGHUP does.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import contract
from core.contract import ContractError, Manifest
from serving import metrics
from serving.config import ServerConfig
from serving.errors import ConfigError
from serving.features import FeatureClient
from serving.inference import Model
from serving.itemtable import ItemTable
from serving.ranker import Ranker

log = logging.getLogger(__name__)

# the files of a run a new export changes; their stats tell a check whether to look closer
WATCHED = (
    contract.MANIFEST_FILE, contract.ONNX_FILE, contract.INT8_FILE, contract.VOCAB_FILE,
    contract.PROBE_FILE,
)  # fmt: skip
SETTLE_S = 10.0  # digests that differ on files this recent: an export still being written
SWAPPED, UNCHANGED, REFUSED, PENDING = "swapped", "unchanged", "refused", "pending"


@dataclass(frozen=True)
class ExportStamp:
    """Where ``--model`` points now and the stats of the run's files: a cheap fingerprint
    (a few ``stat`` calls) that changes whenever an export is written or a link flipped."""

    path: Path  # the run directory, symlinks resolved
    files: tuple[tuple[str, int, int, int], ...]  # (name, inode, size, mtime_ns)

    @classmethod
    def of(cls, model: Path) -> ExportStamp:
        try:
            run_dir = Path(model).resolve()
        except (OSError, RuntimeError):  # a symlink loop: the check then says what is wrong
            run_dir = Path(model).absolute()
        files = []
        for name in WATCHED:
            try:
                st = (run_dir / name).stat()
            except OSError:
                continue
            files.append((name, st.st_ino, st.st_size, st.st_mtime_ns))
        return cls(run_dir, tuple(files))

    @property
    def age_s(self) -> float:
        """Seconds since the newest of the files was written."""
        newest = max((mtime for *_, mtime in self.files), default=0)
        return time.time() - newest / 1e9


@dataclass(frozen=True, eq=False)
class Bundle:
    """A model and what depends on its vocabulary; swapped as one reference."""

    model: Model
    table: ItemTable | None  # the item table indexed for this model (None: not loaded)
    ranker: Ranker
    stamp: ExportStamp | None  # the export it was loaded from


class ExportPending(Exception):
    """The export is being written (or changed while it was checked): look again soon."""


class ModelSlot:
    """Holds the serving bundle and replaces it: after a refresh of the item table
    (``refresh_table``) or with a new, checked model (``check``). One change at a time."""

    def __init__(self, config: ServerConfig, features: FeatureClient, model: Model) -> None:
        self.config = config
        self.features = features
        # the run the model was loaded from (--model resolved when it was built)
        self.current = self._bundle(model, None, ExportStamp.of(model.run_dir))
        # requests read ``current`` once each; everything below replaces it whole
        self._lock = threading.Lock()
        self._refused: ExportStamp | None = None

    def _bundle(self, model: Model, table: ItemTable | None, stamp: ExportStamp | None):
        ranker = Ranker(self.features, model, self.config.item_cache, table)
        return Bundle(model, table, ranker, stamp)

    def refresh_table(self, load: Callable[[Model], ItemTable]) -> int:
        """``load(model)`` builds or maps the item table for the serving model (and makes
        it the feature client's); publish it with that model; returns its size."""
        with self._lock:
            bundle = self.current
            table = load(bundle.model)
            self.current = self._bundle(bundle.model, table, bundle.stamp)
            return len(table)

    # --- hot swap ------------------------------------------------------------------------
    def check(self, force: bool = False) -> str:
        """Look for a new export and swap it in when it passes every check; returns
        SWAPPED, UNCHANGED, REFUSED or PENDING. ``force`` (SIGHUP) also retries files
        refused before. An export being written is waited for up to 3 x ``SETTLE_S``."""
        deadline = time.monotonic() + 3 * SETTLE_S
        while True:
            result = self._check_once(force)
            if result != PENDING:
                return result
            if time.monotonic() > deadline:
                log.warning(
                    "event=model_swap_deferred model=%s reason=%r", self.config.model,
                    "the export is still being written: the next check (SIGHUP, watch) retries",
                )  # fmt: skip
                return result
            time.sleep(0.5)

    def _check_once(self, force: bool) -> str:
        with self._lock:
            stamp = ExportStamp.of(self.config.model)
            old = self.current
            if stamp == old.stamp or (stamp == self._refused and not force):
                return UNCHANGED
            started = time.perf_counter()
            try:
                bundle = self._load(stamp, old)
            except ExportPending as exc:
                log.info("event=model_export_pending path=%s reason=%r", stamp.path, str(exc))
                return PENDING
            except Exception as exc:  # anything wrong with the export: keep serving
                self._refused = stamp
                metrics.MODEL_SWAPS.labels("refused").inc()
                log.error(
                    "event=model_swap_refused path=%s serving=%s reason=%r",
                    stamp.path, old.model.version, _reason(exc),
                )  # fmt: skip
                return REFUSED
            if bundle is None:  # the same export (touched, or another link to it)
                self.current = dataclasses.replace(old, stamp=stamp)
                return UNCHANGED
            if bundle.table is not None:
                self.features.use_table(bundle.table, bundle.model.item_ids, fresh=False)
            self.current = bundle  # from here on, new requests use the new model
            self._refused = None
            new = bundle.model
            metrics.MODEL_SWAPS.labels("ok").inc()
            metrics.set_model(new.version, new.provider, (old.model.version, old.model.provider))
        log.info(
            "event=model_swapped old_version=%s new_version=%s path=%s seconds=%.2f",
            old.model.version, new.version, stamp.path, time.perf_counter() - started,
        )  # fmt: skip
        return SWAPPED

    def _load(self, stamp: ExportStamp, old: Bundle) -> Bundle | None:
        """The new export's bundle, every check passed; None when it is the serving one."""
        try:
            manifest = Manifest.read(stamp.path)
            contract.check_files(stamp.path, manifest)
        except ContractError as exc:  # no manifest yet, or digests that differ
            if stamp.age_s < SETTLE_S:
                raise ExportPending(f"files written {stamp.age_s:.1f}s ago: {exc}") from exc
            raise
        serving = old.model.manifest.raw
        same = manifest.raw["files"] == serving.get("files")
        if manifest.model_version == serving["model_version"] and same:
            return None  # the very files serving (touched, copied, or another link to them)
        model = Model(stamp.path, self.config.provider, self.config.ort_threads)
        verify(model, self.features.content_dim)
        if ExportStamp.of(self.config.model) != stamp:
            raise ExportPending("the export changed while it was checked")
        table = None if old.table is None else old.table.for_vocab(model.item_ids)
        return self._bundle(model, table, stamp)

    def watch(self, stop: threading.Event, every_s: float) -> None:
        """Check every ``every_s`` seconds until ``stop`` is set (a daemon thread's body)."""
        while not stop.wait(every_s):
            try:
                self.check()
            except Exception:  # never let the watch die: the next tick tries again
                log.exception("event=model_watch_failed")


def check_at_start(model: Model, content_dim: int) -> None:
    """Start-up: the same checks as a swap (``check_files``, ``verify``); an export from
    before the manifest listed digests and a probe gets the warm-up only, with a warning."""
    if "files" not in model.manifest.raw:
        log.warning(
            "event=model_unverified version=%s reason=%r", model.version,
            "the manifest lists no file digests (exported before them): re-export the run "
            "for the probe check; such an export cannot be hot-swapped in",
        )  # fmt: skip
        verify(model, content_dim, probe=False)
        return
    try:
        contract.check_files(model.run_dir, model.manifest)
    except ContractError as exc:
        raise ConfigError(str(exc)) from exc
    verify(model, content_dim)


def verify(model: Model, content_dim: int, probe: bool = True) -> None:
    """The checks a loaded model passes before it serves; ConfigError says which failed:
    content width, warm-up (finite scores for a cold user) and the probe (the outputs the
    export measured on its probe feed, within ``PROBE_TOLERANCE``)."""
    if model.content_dim != content_dim:
        raise ConfigError(
            f"model content_dim {model.content_dim} differs from the feature store's "
            f"{content_dim}: the model was trained on other features"
        )
    model.warm_up()
    if not probe:
        return
    try:
        feed, want_logit, want_prob = contract.read_probe(model.run_dir)
        contract.check_feed(feed, model.content_dim)
    except ContractError as exc:
        raise ConfigError(str(exc)) from exc
    logit, prob = model.score(feed)
    if not (np.isfinite(logit).all() and np.isfinite(prob).all()):
        raise ConfigError("model gives non-finite scores on the export's probe feed")
    if prob.min() < 0.0 or prob.max() > 1.0:
        raise ConfigError(f"model gives probabilities outside [0, 1]: {prob.min()}..{prob.max()}")
    diff = max(float(np.abs(logit - want_logit).max()), float(np.abs(prob - want_prob).max()))
    if diff > contract.PROBE_TOLERANCE:
        raise ConfigError(
            f"model's outputs on the probe feed differ from the export's by {diff:.3g} "
            f"(> {contract.PROBE_TOLERANCE}): not the graph that was exported, or a broken runtime"
        )


def _reason(exc: Exception) -> str:
    """One line for the log: the error's message (it says what to fix)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:500]
