"""`python -m serving.healthcheck` against the real server: exit 0 only when SERVING.

The container image's HEALTHCHECK runs this module (serving/deploy/Dockerfile), so it is
tested the way the container engine calls it too: as a subprocess, target from the env.

    pytest tests/test_healthcheck.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving import healthcheck
from serving.server import SERVICE_NAME, create_server
from tests.fixtures.serving import serving_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The module as the container engine runs it, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "serving.healthcheck", *args],
        cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections but never speaks HTTP/2: only a deadline ends
    a call to it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("service", ["", SERVICE_NAME])
def test_serving_server_exits_0(ranking_server, service: str, capsys) -> None:
    assert healthcheck.main(["--target", ranking_server.target, "--service", service]) == 0
    assert capsys.readouterr().out.strip().endswith(": SERVING")


def test_unknown_service_exits_1(ranking_server, capsys) -> None:
    assert healthcheck.main(["--target", ranking_server.target, "--service", "no.Such"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().out


def test_lifecycle_of_a_real_server(tiny_feature_repo: Path, tiny_model_dir: Path) -> None:
    """NOT_SERVING while warming up, SERVING once started, NOT_SERVING on shutdown."""
    from serving.__main__ import build_servicer

    config = serving_config(tiny_feature_repo, tiny_model_dir)
    servicer = build_servicer(config)
    server, port = create_server(config, servicer)  # listening, not yet warmed up
    target = f"127.0.0.1:{port}"
    try:
        assert healthcheck.check(target, SERVICE_NAME) == (
            False, f"{target} service={SERVICE_NAME!r}: NOT_SERVING"
        )  # fmt: skip
        servicer.start()
        assert healthcheck.main(["--target", target, "--service", SERVICE_NAME]) == 0
        servicer.shutting_down()
        assert healthcheck.main(["--target", target]) == 1
    finally:
        servicer.shutting_down()
        server.stop(0).wait()


def test_nothing_listening_exits_1_at_once(closed_port: int) -> None:
    start = time.monotonic()
    ok, line = healthcheck.check(f"127.0.0.1:{closed_port}", timeout_s=5.0)
    assert not ok and "UNAVAILABLE" in line
    assert time.monotonic() - start < 4.0  # refused, not waited out


def test_a_silent_server_is_cut_by_the_deadline(silent_port: int) -> None:
    start = time.monotonic()
    ok, line = healthcheck.check(f"127.0.0.1:{silent_port}", timeout_s=0.5)
    elapsed = time.monotonic() - start
    assert not ok and "DEADLINE_EXCEEDED" in line
    assert 0.4 < elapsed < 5.0


def test_cli_default_target_follows_tailrank_port(ranking_server, closed_port: int) -> None:
    """No --target: localhost on TAILRANK_PORT, as in the image (HEALTHCHECK has none)."""
    found = run_cli("--timeout-s", "5", env={"TAILRANK_PORT": str(ranking_server.port)})
    assert (found.returncode, found.stdout.strip()) == (
        0, f"localhost:{ranking_server.port} service='': SERVING"
    )  # fmt: skip
    missing = run_cli("--timeout-s", "2", env={"TAILRANK_PORT": str(closed_port)})
    assert missing.returncode == 1 and "UNAVAILABLE" in missing.stdout


def test_cli_help_and_bad_arguments() -> None:
    shown = run_cli("--help")
    assert shown.returncode == 0
    assert all(flag in shown.stdout for flag in ("--target", "--service", "--timeout-s"))
    refused = run_cli("--timeout-s", "0")
    assert refused.returncode == 2 and "must be > 0" in refused.stderr
