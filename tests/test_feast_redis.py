"""The Redis online store on the real server at 127.0.0.1:6379 (tests/fixtures/redis.py).

The tiny data set is applied and materialized into Redis the way `make materialize-store
STORE=redis` does it (``training.feast_repo`` with feature_repo/feature_store.redis.yaml,
a file registry beside the features) under a Feast project of this session's own; the
rows read back equal the Parquet; the real gRPC server over that store ranks exactly as
the one over SQLite; a Redis that does not answer is UNAVAILABLE (server) or a clear
FeatureStoreUnavailableError (materialize), never INTERNAL and never a half-written store.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pandas as pd
import pytest
from feast import FeatureStore

from core import schema
from serving.api.tailrank.v1 import ranking_pb2
from tests.fixtures.features import copy_feature_repo
from tests.fixtures.redis import project_keys
from tests.fixtures.serving import serving_config, started_server
from tests.test_feast_store import assert_online_equals_offline
from training import feast_repo

pytestmark = pytest.mark.integration
REDIS_YAML = "feature_store.redis.yaml"
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def redis_repo(
    redis_store: dict, tiny_features_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(repo, the data set's Redis config): the tiny features materialized into Redis."""
    repo = copy_feature_repo(tmp_path_factory.mktemp("redis_repo"))
    folder = repo / "data" / "shop"
    shutil.copytree(tiny_features_dir, folder)
    fs_yaml = feast_repo.write_dataset_config(repo / REDIS_YAML, repo, folder, redis_store["name"])
    feast_repo.materialize_repo(repo, fs_yaml, folder)
    return repo, fs_yaml


@pytest.mark.redis
def test_redis_round_trip(redis_store: dict, redis_repo: tuple[Path, Path]) -> None:
    """Online rows equal the offline Parquet; the registry is a file beside the features;
    Redis holds one hash per user and per item, all under the session's project."""
    repo, fs_yaml = redis_repo
    store = FeatureStore(repo_path=str(repo), fs_yaml_file=fs_yaml)
    assert store.config.online_store.type == "redis"
    assert store.config.project == redis_store["project"]
    assert_online_equals_offline(store, fs_yaml.parent)
    assert (fs_yaml.parent / "registry.db").is_file()
    assert not (fs_yaml.parent / "online_store.db").exists()
    items = pd.read_parquet(fs_yaml.parent / schema.ITEM_FEATURES_FILE)[schema.ITEM_ID]
    users = pd.read_parquet(fs_yaml.parent / schema.USER_FEATURES_FILE)[schema.USER_ID]
    keys = project_keys(redis_store["client"], redis_store["project"])
    assert len(keys) == items.nunique() + users.nunique()


@pytest.fixture(scope="module")
def redis_server(redis_repo: tuple[Path, Path], tiny_model_dir: Path) -> Iterator:
    """The real gRPC server over the Redis store: (stub, servicer)."""
    repo, fs_yaml = redis_repo
    with started_server(serving_config(repo, tiny_model_dir, fs_yaml=fs_yaml)) as running:
        yield running


def _requests(features_dir: Path) -> list[ranking_pb2.RankRequest]:
    """A user with history, an unknown user; known and unknown candidates; explain on."""
    users = pd.read_parquet(features_dir / schema.USER_FEATURES_FILE)
    users = users[users[schema.HISTORY].map(len) > 0][schema.USER_ID].astype(str).tolist()
    items = pd.read_parquet(features_dir / schema.ITEM_FEATURES_FILE)[schema.ITEM_ID]
    cands = items.astype(str).tolist()
    return [
        ranking_pb2.RankRequest(user_id=users[0], candidate_ids=cands),
        ranking_pb2.RankRequest(user_id=users[-1], candidate_ids=cands[:5] + ["no-such-item"],
                                top_k=3, explain=True),
        ranking_pb2.RankRequest(user_id="no-such-user", candidate_ids=cands[::2]),
    ]  # fmt: skip


@pytest.mark.redis
def test_server_over_redis_ranks_as_over_sqlite(
    redis_server, ranking_server, tiny_features_dir: Path
) -> None:
    """The same requests, the SQLite server and the Redis one: equal responses."""
    stub, servicer = redis_server
    assert servicer.features.store.config.online_store.type == "redis"
    assert servicer.features.cache_size == ranking_server.servicer.features.cache_size > 0
    for request in _requests(tiny_features_dir):
        got = stub.Rank(request, timeout=TIMEOUT)
        want = ranking_server.stub.Rank(request, timeout=TIMEOUT)
        assert [i.item_id for i in got.items] == [i.item_id for i in want.items]
        assert [i.score for i in got.items] == [i.score for i in want.items]
        got.ClearField("request_id")
        want.ClearField("request_id")  # each call's own; everything else must be equal
        assert got.items and got == want


def _closed_port_yaml(registry: Path, out: Path) -> Path:
    """A Redis config whose online store is 127.0.0.1:1 (nothing listens there), over an
    applied registry file (absolute path)."""
    out.write_text(
        "project: tailrank\n"
        f"registry: {registry}\n"
        "provider: local\n"
        "online_store:\n  type: redis\n  connection_string: 127.0.0.1:1,password=\n"
        "offline_store:\n  type: file\n"
        "entity_key_serialization_version: 3\n"
    )
    return out


def test_unreachable_redis_rank_is_unavailable(
    tiny_feature_repo: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The real server, its online store a Redis that is down: Rank is UNAVAILABLE with a
    message naming Redis and the address, not INTERNAL; the process goes on serving."""
    fs_yaml = _closed_port_yaml(tiny_feature_repo / "data" / "registry.db",
                                tmp_path / REDIS_YAML)  # fmt: skip
    # no health probe: this is about the read path (the probe: tests/test_fault_drills.py)
    config = serving_config(tiny_feature_repo, tiny_model_dir, fs_yaml=fs_yaml, item_cache=False,
                            store_probe_s=0)  # fmt: skip
    items = pd.read_parquet(tiny_feature_repo / "data" / schema.ITEM_FEATURES_FILE)
    request = ranking_pb2.RankRequest(
        user_id="anyone", candidate_ids=items[schema.ITEM_ID].astype(str).tolist()[:3]
    )
    with started_server(config) as (stub, _):
        for _ in range(2):  # twice: the first failure leaves the server able to answer
            with pytest.raises(grpc.RpcError) as err:
                # redis-py retries a refused connection with back-off before it raises
                # (4-10 s here, docs/RELIABILITY.md): a shorter deadline would test that
                stub.Rank(request, timeout=3 * TIMEOUT)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "redis online store did not answer" in err.value.details()
            assert "127.0.0.1:1" in err.value.details()


def test_unreachable_redis_materialize_is_a_clear_error(
    tiny_features_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make materialize-store STORE=redis` with Redis down (port 1): the error names the
    address and the variables to fix; Feast never ran, so no registry was written."""
    repo = copy_feature_repo(tmp_path / "repo")
    folder = repo / "data" / "shop"
    shutil.copytree(tiny_features_dir, folder)
    monkeypatch.setenv("TAILRANK_REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("TAILRANK_REDIS_PORT", "1")
    fs_yaml = feast_repo.write_dataset_config(repo / REDIS_YAML, repo, folder)
    assert "${TAILRANK_REDIS_PORT}" in fs_yaml.read_text()  # no value is written
    with pytest.raises(
        feast_repo.FeatureStoreUnavailableError, match=r"127\.0\.0\.1:1 .*TAILRANK_REDIS"
    ):
        feast_repo.materialize_repo(repo, fs_yaml, folder)
    assert not (folder / "registry.db").exists()


def test_redis_variables_default_to_the_local_server(tmp_path: Path, monkeypatch) -> None:
    """Without TAILRANK_REDIS_*, the template resolves to 127.0.0.1:6379, no password;
    a variable that is set wins."""
    repo = copy_feature_repo(tmp_path / "repo")
    for name in ("TAILRANK_REDIS_HOST", "TAILRANK_REDIS_PORT", "TAILRANK_REDIS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    config = feast_repo.repo_config(repo, repo / REDIS_YAML)
    assert config.online_store.connection_string == "127.0.0.1:6379,password="
    monkeypatch.setenv("TAILRANK_REDIS_HOST", "redis.example")
    config = feast_repo.repo_config(repo, repo / REDIS_YAML)
    assert config.online_store.connection_string == "redis.example:6379,password="


@pytest.mark.redis
def test_live_histories_on_redis(redis_repo: tuple[Path, Path], tiny_features_dir: Path) -> None:
    """Feedback -> history (serving.histories) reads and writes user rows on Redis; Redis
    keeps the newest row by event time, and the live rows are stamped with the write time."""
    from serving.features import FeatureClient
    from tests.test_live_histories import check_live_round_trip

    repo, fs_yaml = redis_repo
    users = pd.read_parquet(tiny_features_dir / schema.USER_FEATURES_FILE)
    user = str(users[users[schema.HISTORY].map(len) > 0][schema.USER_ID].iloc[0])
    check_live_round_trip(FeatureClient(repo, 384, fs_yaml=fs_yaml), user)
