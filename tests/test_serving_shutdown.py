"""`python -m serving --processes 1` as a real process: SIGHUP reloads the cache, SIGTERM
drains (several processes: tests/test_serving_processes.py).

An exclusive SQLite lock on the online store holds one Rank call inside the server (the
user lookup waits on the lock), SIGTERM arrives, the lock is released: the call must end
OK and the process exit 0 after its grace period.

    pytest tests/test_serving_shutdown.py
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pandas as pd
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core import schema
from serving.api.tailrank.v1 import ranking_pb2, ranking_pb2_grpc

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_serving(channel: grpc.Channel, proc: subprocess.Popen, timeout_s: float = 180) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited during start-up"
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"server not SERVING within {timeout_s}s")


def test_sigterm_lets_in_flight_call_finish(
    tiny_feature_repo: Path, tiny_model_dir: Path, tiny_features_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "serving", "--repo", str(tiny_feature_repo), "--model",
            str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port), "--processes",
            "1", "--metrics-port", "-1", "--no-event-log", "--grace-s", "20"]  # fmt: skip
    log_path = tmp_path / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(argv, cwd=ROOT, stderr=log_file, stdout=log_file, env=env)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        wait_serving(channel, proc)
        proc.send_signal(signal.SIGHUP)  # admin signal: reload the item cache
        deadline = time.monotonic() + 60
        while log_path.read_text().count("event=cache_loaded") < 2:
            assert time.monotonic() < deadline, "SIGHUP did not reload the item cache"
            time.sleep(0.2)
        items = pd.read_parquet(tiny_features_dir / schema.ITEM_FEATURES_FILE)[schema.ITEM_ID]
        request = ranking_pb2.RankRequest(user_id="u-any", candidate_ids=list(items[:5]))
        lock = sqlite3.connect(tiny_feature_repo / "data" / "online_store.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # the server's user lookup now waits (5 s busy timeout)
        try:
            call = ranking_pb2_grpc.RankingServiceStub(channel).Rank.future(request, timeout=30)
            time.sleep(1.0)
            assert not call.done(), "the call must be held inside the server by the lock"
            proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert proc.poll() is None, "the server must wait for the in-flight call"
            assert not call.done(), "still held: SIGTERM must not cut the call short"
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        reply = call.result()
        assert reply.cold_user and len(reply.items) == 5
        assert proc.wait(timeout=60) == 0
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log_text = log_path.read_text()
    assert "event=shutdown" in log_text and "event=stopped" in log_text
