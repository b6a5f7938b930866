"""Defaults of the environment variables the Feast store templates read.

Feast expands ``${VAR}`` in a feature_store yaml with ``os.path.expandvars``, which has no
``${VAR:-default}``. The Redis templates' variables get their local defaults here (Redis
at 127.0.0.1:6379 without a password, as on the development machines and in CI), set by
``training.feast_repo`` and ``serving.features`` before Feast reads a configuration; a
value already in the environment always wins. PostgreSQL's variables have no defaults:
its templates also hold a registry, and a wrong database must not be guessed.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

__all__ = ["STORE_ENV_DEFAULTS", "set_store_env_defaults"]

STORE_ENV_DEFAULTS: dict[str, str] = {
    "TAILRANK_REDIS_HOST": "127.0.0.1",
    "TAILRANK_REDIS_PORT": "6379",
    "TAILRANK_REDIS_PASSWORD": "",  # empty: no AUTH (a Redis without requirepass)
}


def set_store_env_defaults(environ: MutableMapping[str, str] | None = None) -> None:
    """Set every variable of ``STORE_ENV_DEFAULTS`` that ``environ`` (os.environ) lacks."""
    target = os.environ if environ is None else environ
    for name, value in STORE_ENV_DEFAULTS.items():
        target.setdefault(name, value)
