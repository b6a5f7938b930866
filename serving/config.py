"""Server configuration: a typed dataclass, filled from defaults, `TAILRANK_*` env, then flags.

Precedence: command-line flag > environment variable > the default below. Every field has
a flag (``--cache-refresh-s``) and an env variable (``TAILRANK_CACHE_REFRESH_S``).

    python -m serving --help
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.cli import parse_bool
from serving.errors import ConfigError

ENV_PREFIX = "TAILRANK_"
PROVIDERS = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ServerConfig:
    """Everything `python -m serving` needs; see docs/SERVING.md for each field."""

    repo: Path = Path("feature_repo")  # Feast repo (feature_store.yaml) to read features from
    fs_yaml: Path | None = None  # feature_store.yaml to use instead of <repo>/feature_store.yaml
    model: Path = Path("artifacts/movielens-100k")  # run dir with manifest.json + model.onnx
    # or a symlink to one, followed at each check (docs/SERVING.md, "Model hot swap")
    model_watch_s: float = 0.0  # check --model for a new export every N s; 0 = only on SIGHUP
    host: str = "127.0.0.1"  # address to bind; "[::]" (all) needs TLS or --insecure
    port: int = 50051  # gRPC port; 0 picks a free one
    metrics_port: int = 9100  # Prometheus HTTP port; -1 turns the endpoint off
    provider: str = "auto"  # ONNX Runtime provider: auto (CUDA when present), cpu or cuda
    max_candidates: int = 1000  # requests with more candidates are INVALID_ARGUMENT
    tail_weight: float = 0.1  # default long-tail weight (lambda) in [0, 1]; docs/SERVING.md
    workers: int = 8  # gRPC worker threads per process (requests being handled at once)
    processes: int = 0  # server processes on one port (SO_REUSEPORT); 0 = one per core
    max_in_flight: int = 0  # per process: more RPCs at once get RESOURCE_EXHAUSTED; 0 = 2 x workers
    ort_threads: int = 1  # ONNX Runtime intra-op threads per run; 0 lets ORT choose
    item_cache: bool = True  # False: fetch every candidate from Feast per request (naive)
    cache_refresh_s: float = 0.0  # reload the item cache every N seconds; 0 = only on SIGHUP
    cache_batch_size: int = 500  # items per Feast call when filling the cache
    grace_s: float = 10.0  # on SIGTERM, how long in-flight requests may take to finish
    # probe the online store every N s; 3 failures in a row: health NOT_SERVING until one
    # answers (docs/RELIABILITY.md); 0 = no probe (health ignores the store)
    store_probe_s: float = 1.0
    event_log_url: str | None = "sqlite:///data/events.db"  # None (--no-event-log): off
    live_histories: bool = True  # Feedback appends to the user's history in the online store
    history_len: int = 0  # live histories keep the last N; 0: training.features' value, else 50
    # impression rows one process holds for the event log; more are dropped and counted.
    # Also what a kill -9 loses at most (plus one batch being written)
    event_queue_size: int = 10000
    log_level: str = "INFO"
    # TLS, mTLS and bearer tokens (docs/SECURITY.md); SIGHUP re-reads every file below
    tls_cert: Path | None = None  # PEM certificate chain: serve TLS (with tls_key)
    tls_key: Path | None = None  # PEM private key of tls_cert, unencrypted
    tls_client_ca: Path | None = None  # PEM CA bundle: require client certificates (mTLS)
    insecure: bool = False  # allow plaintext on a non-loopback host (a private network)
    auth_tokens_file: Path | None = None  # token hash lines (python -m serving.tokens)
    auth_tokens: str | None = None  # hash lines in one value, separated by ';' or newlines
    auth_open_health: bool = True  # with tokens: grpc.health.v1 answers without one
    auth_open_reflection: bool = False  # with tokens: reflection answers without one

    def __post_init__(self) -> None:
        """Reject values the server cannot run with, saying what to change."""
        if self.provider not in PROVIDERS:
            raise ConfigError(f"provider must be one of {PROVIDERS}, got {self.provider!r}")
        if not 0.0 <= self.tail_weight <= 1.0:
            raise ConfigError(f"tail_weight must be in [0, 1], got {self.tail_weight}")
        for name in ("max_candidates", "workers", "cache_batch_size", "event_queue_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"log_level must be DEBUG, INFO, WARNING or ERROR: {self.log_level}")
        if min(
            self.ort_threads, self.cache_refresh_s, self.grace_s, self.model_watch_s,
            self.store_probe_s,
        ) < 0:  # fmt: skip
            raise ConfigError(
                "ort_threads, cache_refresh_s, grace_s, model_watch_s and store_probe_s "
                "must be >= 0"
            )
        if self.history_len < 0:
            raise ConfigError(
                f"history_len is {self.history_len}: use 0 (the features step's) or a count"
            )
        if self.processes < 0 or self.max_in_flight < 0:
            raise ConfigError(
                "processes and max_in_flight must be >= 0 (0 = one process per core, "
                f"2 x workers in flight); got {self.processes} and {self.max_in_flight}"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535] (0 = any free port), got {self.port}")
        if not -1 <= self.metrics_port <= 65535:
            raise ConfigError(
                f"metrics_port must be in [-1, 65535] (-1 = off), got {self.metrics_port}"
            )
        self._check_transport()

    def _check_transport(self) -> None:
        """TLS settings that go together; no plaintext off loopback unless ``insecure``."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                "tls_cert and tls_key go together: set both --tls-cert and --tls-key "
                "(TAILRANK_TLS_CERT, TAILRANK_TLS_KEY), or neither for plaintext"
            )
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError(
                "tls_client_ca (mTLS) needs server TLS too: set --tls-cert and --tls-key"
            )
        if self.tls_cert is None and not self.insecure and not is_loopback(self.host):
            raise ConfigError(
                f"host {self.host} is not a loopback address and the server has no TLS: set "
                "--tls-cert and --tls-key (TAILRANK_TLS_CERT, TAILRANK_TLS_KEY), or pass "
                "--insecure (TAILRANK_INSECURE=true) to serve plaintext on a private network "
                "on purpose (docs/SECURITY.md)"
            )

    @property
    def auth_enabled(self) -> bool:
        """Bearer tokens are required (a token file or token lines are configured)."""
        return self.auth_tokens_file is not None or bool(self.auth_tokens)

    @property
    def process_count(self) -> int:
        """Server processes to run: ``processes``, or the cores this process may use."""
        return self.processes or len(os.sched_getaffinity(0))

    @property
    def in_flight_limit(self) -> int:
        """RPCs one process handles or queues at once; past it, RESOURCE_EXHAUSTED."""
        return self.max_in_flight or 2 * self.workers


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.0.0.0/8`` or ``[::1]``: reachable from this machine only."""
    name = host.strip().removeprefix("[").removesuffix("]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # another host name: it may resolve to any interface
        return False


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _cast(field: dataclasses.Field, raw: str) -> object:
    """Convert an env/flag string to the field's type, with a clear error."""
    kind = str(field.type)
    try:
        if kind == "bool":
            return parse_bool(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind in ("Path", "Path | None"):
            return Path(raw)
    except ValueError:
        raise ConfigError(f"{field.name}: cannot read {raw!r} as {kind}") from None
    return raw


def config_env_names() -> set[str]:
    """The ``TAILRANK_*`` variables that set a ServerConfig field (others, such as the Feast
    templates' ``TAILRANK_REDIS_*``, are not the server's settings)."""
    names = {ENV_PREFIX + field.name.upper() for field in dataclasses.fields(ServerConfig)}
    return names | {ENV_PREFIX + "NO_EVENT_LOG"}


def from_env(env: Mapping[str, str] | None = None) -> dict[str, object]:
    """Field values found in ``TAILRANK_<FIELD>`` variables."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for field in dataclasses.fields(ServerConfig):
        raw = env.get(ENV_PREFIX + field.name.upper())
        if raw is not None:
            values[field.name] = _cast(field, raw)
    no_log = env.get(ENV_PREFIX + "NO_EVENT_LOG", "").strip()
    try:
        if no_log and parse_bool(no_log):
            values["event_log_url"] = None
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}NO_EVENT_LOG: {exc}") from None
    return values


def build_parser() -> argparse.ArgumentParser:
    """The `python -m serving` argument parser; every default is None (env/dataclass fill)."""
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description="tailrank gRPC ranking server (Feast features + ONNX Runtime).",
        epilog="Each flag also reads TAILRANK_<NAME> from the environment (flags win).",
    )
    defaults = ServerConfig()
    for field in dataclasses.fields(ServerConfig):
        kind = str(field.type)
        default = getattr(defaults, field.name)
        help_text = f"default: {default} (env {ENV_PREFIX}{field.name.upper()})"
        if kind == "bool":
            parser.add_argument(
                _flag(field.name), dest=field.name, default=None,
                action=argparse.BooleanOptionalAction, help=help_text,
            )  # fmt: skip
        else:
            parser.add_argument(_flag(field.name), dest=field.name, default=None, help=help_text)
    parser.add_argument(
        "--no-event-log", action="store_true", help="do not log impressions or feedback"
    )
    return parser


def to_argv(config: ServerConfig) -> list[str]:
    """Flags that make ``load_config`` return ``config`` again (whatever the environment)."""
    argv: list[str] = []
    for field in dataclasses.fields(ServerConfig):
        value = getattr(config, field.name)
        if str(field.type) == "bool":
            argv.append(_flag(field.name) if value else "--no-" + _flag(field.name)[2:])
        elif value is None:  # fs_yaml: absent; event_log_url: off
            argv += ["--no-event-log"] if field.name == "event_log_url" else []
        else:
            argv += [_flag(field.name), str(value)]
    return argv


def load_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> ServerConfig:
    """Resolve the config: dataclass defaults < environment < command-line flags."""
    args = build_parser().parse_args(argv)
    values = from_env(env)
    fields = {f.name: f for f in dataclasses.fields(ServerConfig)}
    for name, raw in vars(args).items():
        if name in fields and raw is not None:
            values[name] = raw if isinstance(raw, bool) else _cast(fields[name], raw)
    if args.no_event_log:
        values["event_log_url"] = None
    return ServerConfig(**values)
