"""Outputs of ``python -m serving.report``: CSV tables and PNG plots, written atomically.

``save_outputs(out, summary, by_position, exposure, catalogue_size)`` writes into ``out``:

- ``report.csv``: the per-model-version summary table;
- ``ctr_by_position.csv``: impressions, clicks and CTR per (model_version, position);
- ``lorenz.png``: the Lorenz curve of item exposure per model version (the diagonal is
  perfectly even exposure; the further below it, the more exposure the head takes);
- ``ctr_by_position.png``: CTR against position per model version.

Each file is written to a temporary name in ``out`` and renamed, so a reader never sees a
half-written file. matplotlib runs on the Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from core.files import write_atomic
from core.schema import ITEM_FEATURES_FILE, ITEM_ID  # noqa: E402
from serving.errors import ConfigError  # noqa: E402

REPORT_FILE = "report.csv"
POSITION_FILE = "ctr_by_position.csv"
LORENZ_PNG = "lorenz.png"
POSITION_PNG = "ctr_by_position.png"


def catalogue_size_from_features(features_dir: Path) -> int:
    """Distinct items in ``<features_dir>/item_features.parquet`` (training.features)."""
    path = Path(features_dir) / ITEM_FEATURES_FILE
    if not path.is_file():
        raise ConfigError(
            f"--features {features_dir}: no {ITEM_FEATURES_FILE}; run python -m "
            "training.features first, or give --catalogue-size"
        )
    items = pq.read_table(path, columns=[ITEM_ID]).column(ITEM_ID).to_pandas()
    return int(items.nunique())


def lorenz_curve(exposure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share of items, share of impressions) from the least to the most shown item."""
    x = np.sort(np.asarray(exposure, dtype=np.float64))
    total = x.sum()
    items = np.linspace(0.0, 1.0, x.size + 1)
    shown = np.concatenate([[0.0], np.cumsum(x) / total]) if total > 0 else items
    return items, shown


def plot_lorenz(exposure: dict[str, np.ndarray], catalogue_size: int | None, path: Path) -> None:
    """Lorenz curve of item exposure (impressions per item), one line per model version."""
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="even exposure")
    for version, counts in sorted(exposure.items()):
        items, shown = lorenz_curve(counts)
        ax.plot(items, shown, label=str(version))
    scope = f"{catalogue_size} catalogue items" if catalogue_size else "items shown"
    ax.set(xlabel=f"share of items ({scope}), least shown first", ylabel="share of impressions")
    ax.set_title("Exposure Lorenz curve")
    ax.legend(loc="upper left")
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def plot_ctr_by_position(by_position: pd.DataFrame, path: Path) -> None:
    """Click-through rate against position, one line per model version."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for version, g in by_position.groupby("model_version", sort=True):
        ax.plot(g["position"], g["ctr"], marker="o", label=str(version))
    ax.set(xlabel="position (1 = first)", ylabel="CTR (click, cart or purchase)")
    ax.set_title("CTR by position")
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def save_outputs(
    out: Path,
    summary: pd.DataFrame,
    by_position: pd.DataFrame,
    exposure: dict[str, np.ndarray],
    catalogue_size: int | None,
) -> None:
    """Write the two CSV tables and the two PNG plots into ``out`` (created if missing).

    ``exposure`` maps each model version to its impressions per item (zeros included).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give a folder")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / REPORT_FILE, lambda tmp: summary.to_csv(tmp, index=False))
    write_atomic(out / POSITION_FILE, lambda tmp: by_position.to_csv(tmp, index=False))
    plot_lorenz(exposure, catalogue_size, out / LORENZ_PNG)
    plot_ctr_by_position(by_position, out / POSITION_PNG)
