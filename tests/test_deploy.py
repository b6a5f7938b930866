"""The deployment files hold together: Dockerfile, .dockerignore, compose file, Kubernetes.

No container engine or cluster runs here, so nothing is built or applied: the files are
parsed and checked against each other and against the code they run. Env variable names
come from ``ServerConfig`` (serving/config.py) and from the ``${VAR}``s of the Feast
yamls; ports from the config each file's env resolves to. The last test runs two server
replicas over the Kubernetes ConfigMap's Feast yaml and one PostgreSQL. docs/DEPLOY.md.

    pytest tests/test_deploy.py
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import grpc
import pandas as pd
import pytest
import yaml

from core import schema
from serving import healthcheck
from serving.__main__ import build_servicer
from serving.api.tailrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.config import ENV_PREFIX, ServerConfig, load_config
from serving.errors import ConfigError
from serving.server import SERVICE_NAME, create_server
from tests.fixtures.deploy import (
    DEPLOY,
    FEAST_YAMLS,
    K8S,
    KNOWN_ENV,
    ROOT,
    compose_env,
    container,
    dockerfile_env,
    dockerfile_problems,
    dockerfile_stages,
    dockerignored,
    feast_vars,
    image_files,
    image_uid,
    k8s_env,
    load_k8s,
    one,
)
from tests.fixtures.features import copy_feature_repo
from tests.fixtures.serving import serving_config

HEALTH_SERVICES = {"", SERVICE_NAME}  # what the server registers health for
SECRET_PLACEHOLDER = "CHANGE-ME"
COMPOSE_SECRETS = {"POSTGRES_PASSWORD": "pg-secret", "REDIS_PASSWORD": "redis-secret"}


# --- Dockerfile -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def image_env(dockerfile: str) -> dict[str, str]:
    return dockerfile_env(dockerfile_stages(dockerfile)[-1])


def test_dockerfile_is_a_non_root_torch_free_serving_image(dockerfile: str) -> None:
    assert dockerfile_problems(dockerfile) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("USER 10001:10001", "USER root"), "numeric non-root USER"),
        (("USER 10001:10001", "USER 0"), "numeric non-root USER"),
        (('RUN pip install . "feast[redis]"', 'RUN pip install ".[train]"'), "with an extra"),
        (('RUN pip install . "feast[redis]"', "RUN pip install . torch"), "installs 'torch'"),
        (("COPY core/ core/", "COPY training/ training/"), "does not run"),
        (("HEALTHCHECK --interval", "LABEL x=1 --interval"), "HEALTHCHECK"),
    ],
)
def test_dockerfile_check_finds_a_planted_fault(
    dockerfile: str, change: tuple[str, str], problem: str
) -> None:
    assert change[0] in dockerfile
    problems = dockerfile_problems(dockerfile.replace(*change))
    assert any(problem in p for p in problems), problems


def test_healthcheck_runs_the_module_within_its_timeout(dockerfile: str) -> None:
    (check,) = [a for k, a in dockerfile_stages(dockerfile)[-1] if k == "HEALTHCHECK"]
    options, _, command = check.partition(" CMD ")
    argv = yaml.safe_load(command)  # exec form: a JSON list
    assert argv[:3] == ["python", "-m", "serving.healthcheck"]
    assert importlib.util.find_spec("serving.healthcheck") is not None
    engine_timeout = float(re.search(r"--timeout=(\d+)s", options).group(1))
    assert float(argv[argv.index("--timeout-s") + 1]) < engine_timeout


def test_image_exposes_the_ports_its_env_configures(dockerfile: str, image_env: dict) -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        load_config([], env=image_env)  # all interfaces: the deployment picks TLS or not
    config = load_config(["--insecure"], env=image_env)
    exposed = {
        int(p) for k, a in dockerfile_stages(dockerfile)[-1] if k == "EXPOSE" for p in a.split()
    }
    assert exposed == {config.port, config.metrics_port}
    assert (config.port, config.metrics_port) == (ServerConfig.port, ServerConfig.metrics_port)
    assert set(image_env) & {n for n in image_env if n.startswith(ENV_PREFIX)} <= KNOWN_ENV


# --- .dockerignore ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "data/movielens-100k/interactions.parquet",
        "artifacts/movielens-100k/manifest.json",
        "artifacts/movielens-100k/model.onnx",
        "feature_repo/data/online_store.db",
        "serving/__pycache__/server.cpython-311.pyc",
        "serving/deploy/.env",
    ],
)
def test_dockerignore_keeps_out(ignore_patterns: list[str], path: str) -> None:
    assert dockerignored(ignore_patterns, path)


def test_dockerignore_keeps_what_the_dockerfile_copies(
    dockerfile: str, ignore_patterns: list[str]
) -> None:
    sources = []
    for stage in dockerfile_stages(dockerfile):
        for keyword, args in stage:
            if keyword == "COPY" and not args.startswith("--from"):
                sources += args.split()[:-1]
    assert {"pyproject.toml", "README.md", "core/", "serving/"} <= set(sources)
    for source in sources:
        found = [p.relative_to(ROOT).as_posix() for p in ROOT.glob(source.rstrip("/"))]
        assert found, f"COPY {source}: nothing in the repository matches"
        assert not any(dockerignored(ignore_patterns, f) for f in found), source
    assert dockerignored(["data/", "!data/keep"], "data/x") and not dockerignored(
        ["data/", "!data/keep"], "data/keep"
    )  # the matcher itself: last match wins


# --- compose ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_server_waits_for_healthy_stores(compose: dict) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "init", "server"} <= set(services)
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert services["server"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "init": {"condition": "service_completed_successfully"},
    }
    assert services["init"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }


def test_compose_server_is_replicated_and_builds_this_dockerfile(compose: dict) -> None:
    server = compose["services"]["server"]
    assert server["deploy"]["replicas"] >= 2
    assert "ports" not in server  # fixed host ports would collide between replicas
    build = server["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert compose["services"]["init"]["image"] == server["image"]


def test_compose_needs_its_secrets_from_the_environment(compose: dict) -> None:
    for service in ("postgres", "redis", "server", "init"):
        with pytest.raises(KeyError, match="PASSWORD"):
            compose_env(compose["services"][service], env={})


@pytest.mark.parametrize("online_store", ["postgres", "redis"])
def test_compose_server_env_resolves_to_a_working_config(
    compose: dict, image_env: dict, dockerfile: str, online_store: str
) -> None:
    services = compose["services"]
    env = {
        **image_env,
        **compose_env(services["server"], {**COMPOSE_SECRETS, "ONLINE_STORE": online_store}),
    }
    assert {n for n in env if n.startswith(ENV_PREFIX)} <= KNOWN_ENV
    config = load_config([], env=env)
    assert {str(config.port), str(config.metrics_port)} == set(services["server"]["expose"])
    # the store config is a file the image copies into its feature repo, every variable set
    assert config.fs_yaml.parent == Path(image_env["TAILRANK_REPO"])
    in_image = image_files(dockerfile)
    assert f"{config.repo}/tailrank_repo.py" in in_image
    needed = feast_vars(in_image[str(config.fs_yaml)].read_text())
    assert needed and all(env.get(v) is not None for v in needed)
    # ... pointing at the compose services with their credentials
    pg = compose_env(services["postgres"], COMPOSE_SECRETS)
    assert (env["TAILRANK_PG_HOST"], env["TAILRANK_REDIS_HOST"]) == ("postgres", "redis")
    assert (env["TAILRANK_PG_USER"], env["TAILRANK_PG_DB"]) == (
        pg["POSTGRES_USER"],
        pg["POSTGRES_DB"],
    )
    assert env["TAILRANK_PG_PASSWORD"] == pg["POSTGRES_PASSWORD"] == "pg-secret"
    assert config.event_log_url.startswith("postgresql+psycopg://tailrank:pg-secret@postgres:")
    # the model is mounted read-only where the config looks for it
    (model,) = [v for v in services["server"]["volumes"] if v["target"] == str(config.model)]
    assert model["read_only"] is True
    assert services["server"]["read_only"] is True and "/tmp" in services["server"]["tmpfs"]


# --- Kubernetes ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict]:
    return load_k8s()


def test_kustomization_lists_every_manifest_but_no_secret(k8s: dict) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert "Secret" not in {
        d["kind"] for f in files for d in yaml.safe_load_all((K8S / f).read_text())
    }


def test_selectors_match_the_pod_labels(k8s: dict) -> None:
    deployment = one(k8s, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= labels.items()
    services = [obj for (kind, _), obj in k8s.items() if kind == "Service"]
    assert len(services) == 2
    for obj in services:
        assert obj["spec"]["selector"] == selector, obj["metadata"]["name"]
    assert one(k8s, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector


def test_hpa_scales_the_deployment_on_cpu(k8s: dict) -> None:
    hpa, deployment = one(k8s, "HorizontalPodAutoscaler"), one(k8s, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert (
        metric["resource"]["name"] == "cpu"
        and metric["resource"]["target"]["type"] == "Utilization"
    )
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    resources = container(k8s)["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind


def test_probes_are_grpc_on_the_servers_port(k8s: dict, image_env: dict) -> None:
    config = load_config([], env=k8s_env(k8s, image_env))
    ports = {p["name"]: p["containerPort"] for p in container(k8s)["ports"]}
    assert ports == {"grpc": config.port, "metrics": config.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container(k8s)[probe]
        assert set(spec) & {"httpGet", "tcpSocket", "exec"} == set(), probe
        assert spec["grpc"]["port"] == config.port, probe
        assert spec["grpc"].get("service", "") in HEALTH_SERVICES, probe
    for service in (obj for (kind, _), obj in k8s.items() if kind == "Service"):
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports and port["port"] == ports[port["targetPort"]]


def test_pod_runs_non_root_on_a_read_only_root(k8s: dict, dockerfile: str, image_env) -> None:
    pod = one(k8s, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid(dockerfile) != 0
    security = container(k8s)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == [
        "ALL"
    ]
    # so nothing may write under the root: /tmp is a volume, the event log is PostgreSQL
    mounts = {m["mountPath"]: m for m in container(k8s)["volumeMounts"]}
    assert "/tmp" in mounts
    config = load_config([], env=k8s_env(k8s, image_env))
    assert config.event_log_url.startswith("postgresql+psycopg://tailrank:CHANGE-ME@")
    (model_mount,) = [m for path, m in mounts.items() if config.model.is_relative_to(path)]
    assert model_mount["readOnly"] is True


def test_env_names_are_known_and_secrets_come_from_the_secret(k8s: dict, image_env) -> None:
    env = k8s_env(k8s, image_env)
    assert {n for n in env if n.startswith(ENV_PREFIX)} <= KNOWN_ENV
    secret = k8s[("Secret", "tailrank-store")]["stringData"]
    assert secret and set(secret.values()) == {SECRET_PLACEHOLDER}  # no value committed
    for var in container(k8s)["env"]:
        if "PASSWORD" in var["name"]:
            assert var["valueFrom"]["secretKeyRef"]["key"] in secret, var["name"]


def test_configmap_feast_yamls_are_the_data_sets(k8s: dict, image_env: dict, tmp_path) -> None:
    """The mounted store configs are what `make materialize-store STORE=...` writes for the
    Makefile's default data set, and every variable they need is set."""
    from training.feast_repo import write_dataset_config

    env = k8s_env(k8s, image_env)
    config = load_config([], env=env)
    mounts = {m["name"]: m["mountPath"] for m in container(k8s)["volumeMounts"]}
    volumes = one(k8s, "Deployment")["spec"]["template"]["spec"]["volumes"]
    (feast,) = [v for v in volumes if "configMap" in v]
    assert config.fs_yaml.parent == Path(mounts[feast["name"]])
    data = k8s[("ConfigMap", feast["configMap"]["name"])]["data"]
    assert config.fs_yaml.name in data
    name = re.search(r"^DATASET \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    templates = {"feature_store.yaml": "feature_store.postgres.yaml",
                 "feature_store.redis.yaml": "feature_store.redis.yaml"}  # fmt: skip
    assert set(data) == set(templates)
    for key, template in templates.items():
        written = write_dataset_config(
            FEAST_YAMLS[template], ROOT / "feature_repo", tmp_path / name, name
        )
        mounted, expected = yaml.safe_load(data[key]), yaml.safe_load(written.read_text())
        for doc in (mounted, expected):  # the one setting operators may tighten (TLS)
            doc["online_store"].pop("sslmode", None)
        assert mounted == expected, key
        needed = feast_vars(data[key])
        assert needed and all(env.get(v) is not None for v in needed), key


def test_ports_agree_across_image_compose_and_kubernetes(
    k8s: dict, compose: dict, dockerfile: str
) -> None:
    exposed = {
        int(p) for k, a in dockerfile_stages(dockerfile)[-1] if k == "EXPOSE" for p in a.split()
    }
    in_compose = {int(p) for p in compose["services"]["server"]["expose"]}
    in_k8s = {p["containerPort"] for p in container(k8s)["ports"]}
    assert exposed == in_compose == in_k8s == {ServerConfig.port, ServerConfig.metrics_port}


# --- the Kubernetes store config, for real: two replicas, one PostgreSQL ---------------------
def _rank(port: int, request: ranking_pb2.RankRequest) -> ranking_pb2.RankResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return ranking_pb2_grpc.RankingServiceStub(channel).Rank(request, timeout=10)


@pytest.mark.integration
@pytest.mark.postgres
def test_two_replicas_share_one_postgres_store(
    k8s: dict,
    postgres_database: dict,
    tiny_features_dir: Path,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replicas started from the ConfigMap's Feast yaml read one store: they rank alike,
    and a user or item written to the store after they started is known to both at once."""
    from training import feast_repo  # the materialize step (a training-side job)

    repo = copy_feature_repo(tmp_path / "repo", tiny_features_dir)
    fs_yaml = tmp_path / "etc" / "feature_store.yaml"  # as the ConfigMap mounts it
    fs_yaml.parent.mkdir()
    fs_yaml.write_text(k8s[("ConfigMap", "tailrank-feast")]["data"]["feature_store.yaml"])
    db = postgres_database
    for name, value in [("HOST", db["host"]), ("PORT", db["port"]), ("DB", db["database"]),
                        ("USER", db["user"]), ("PASSWORD", "")]:  # fmt: skip
        monkeypatch.setenv(f"TAILRANK_PG_{name}", str(value))
    # what `make materialize-store STORE=postgres` does for a data set
    store = feast_repo.materialize_repo(repo, fs_yaml=fs_yaml, features_dir=repo / "data")

    users = pd.read_parquet(tiny_features_dir / schema.USER_FEATURES_FILE)
    items = pd.read_parquet(tiny_features_dir / schema.ITEM_FEATURES_FILE)
    known = ranking_pb2.RankRequest(
        user_id=str(users[schema.USER_ID].iloc[0]),
        candidate_ids=[str(i) for i in items[schema.ITEM_ID].iloc[:8]],
    )
    late = ranking_pb2.RankRequest(
        user_id="late-user", candidate_ids=[*known.candidate_ids[:3], "late-item"]
    )
    replicas = []
    try:
        for _ in range(2):
            config = serving_config(repo, tiny_model_dir, fs_yaml=fs_yaml)
            servicer = build_servicer(config)
            assert servicer.features.store.config.online_store.type == "postgres"
            servicer.start()
            # an id asked for before it was written is remembered as unknown for MISS_TTL_S
            # (30 s, docs/SERVING.md "Misses"); no wait here: see the write at once
            servicer.features.miss_ttl_s = 0.0
            replicas.append((servicer, *create_server(config, servicer)))
        ports = [port for _, _, port in replicas]
        assert [healthcheck.main(["--target", f"127.0.0.1:{p}"]) for p in ports] == [0, 0]
        first, second = ([(i.item_id, i.score) for i in _rank(p, known).items] for p in ports)
        assert first == second and len(first) == 8
        before = [_rank(p, late) for p in ports]
        assert [(r.cold_user, [u.item_id for u in r.unscored]) for r in before] == [
            (True, ["late-item"])
        ] * 2
        # one write to the shared store, after both replicas filled their caches
        store.write_to_online_store(
            schema.USER_VIEW, users.iloc[[0]].assign(**{schema.USER_ID: "late-user"})
        )
        store.write_to_online_store(
            schema.ITEM_VIEW, items.iloc[[0]].assign(**{schema.ITEM_ID: "late-item"})
        )
        after = [_rank(p, late) for p in ports]
        assert [(r.cold_user, len(r.items), len(r.unscored)) for r in after] == [(False, 4, 0)] * 2
    finally:
        for servicer, server, _ in replicas:
            servicer.shutting_down()
            server.stop(0).wait()
