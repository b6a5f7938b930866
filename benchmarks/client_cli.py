"""Benchmark: wall time of the README's first call, `python -m serving.client`, end to end.

    python -m benchmarks.client_cli [--runs 5] [--items 1682]

Builds the synthetic setup of ``benchmarks.serving`` (a materialized Feast repo and an
untrained model), starts a real server on a free loopback port in this process, then runs
the client CLI as a fresh subprocess ``--runs`` times for each way of showing titles:
none, ``--titles <features folder>`` (reads the Parquet source, no Feast) and ``--repo``
(reads the online store through Feast). Prints the median and range of each; nothing is
asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.serving import ROOT, build_synthetic
from serving.__main__ import build_servicer
from serving.config import ServerConfig
from serving.server import create_server

log = logging.getLogger("benchmarks.client_cli")


def time_client(argv: list[str], runs: int) -> list[float]:
    """Seconds per run of the client CLI in a fresh interpreter (exit code checked)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "serving.client", *argv], cwd=ROOT, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"client failed: {done.stderr}")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.client_cli", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="client runs per variant")
    parser.add_argument("--items", type=int, default=1682, help="synthetic catalogue size")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="tailrank-client-") as tmp:
        repo, model = build_synthetic(Path(tmp), args.items, 100)
        config = ServerConfig(
            repo=repo, model=model, host="127.0.0.1", port=0, metrics_port=-1,
            event_log_url=None, fs_yaml=repo / "feature_store.yaml",
        )  # fmt: skip
        servicer = build_servicer(config)
        servicer.start()
        server, port = create_server(config, servicer)
        base = ["--target", f"127.0.0.1:{port}", "--user", "u1", "--top-k", "8",
                "--candidates", ",".join(f"i{k}" for k in range(0, 160, 10))]  # fmt: skip
        env_yaml = {"FEAST_FS_YAML_FILE_PATH": str(repo / "feature_store.yaml")}
        os.environ.update(env_yaml)
        variants = {
            "no titles": base,
            "--titles <features folder>": [*base, "--titles", str(repo / "data")],
            "--repo (Feast online store)": [*base, "--repo", str(repo)],
        }
        print(f"python -m serving.client, {args.runs} runs each, load {os.getloadavg()[0]:.1f}")
        for name, client_argv in variants.items():
            times = time_client(client_argv, args.runs)
            print(f"{name:<30} median {statistics.median(times):.2f} s "
                  f"(min {min(times):.2f}, max {max(times):.2f})")  # fmt: skip
        server.stop(0).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
