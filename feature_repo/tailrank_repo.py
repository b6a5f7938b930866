"""tailrank's Feast definitions: entities, offline sources, feature views, feature service.

Definitions only: `feast apply` (run in this folder) imports every ``*.py`` here and
registers what it finds. The Parquet sources are written by
``python -m training.features --out feature_repo/data/<data set>``; names and
columns follow docs/ARCHITECTURE.md section 2 (kept literal here: Feast imports this file
on its own, without tailrank on the path).
"""

import os
from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Int64, String, UnixTimestamp

# --- entities: the two things features are about; ids are strings everywhere ---------
user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A shopper; the ranking request names one.",
)
item = Entity(
    name="item",
    join_keys=["item_id"],
    value_type=ValueType.STRING,
    description="A catalogue item; the ranking request's candidates.",
)

# --- sources: the Parquet files of the features step (paths relative to this folder) ---
# Each data set has its own folder: `python -m training.feast_repo` (what `make materialize`
# runs) sets TAILRANK_FEATURES_DIR to it, e.g. data/movielens-100k. Unset: data/.
FEATURES_DIR = os.environ.get("TAILRANK_FEATURES_DIR", "data")
user_source = FileSource(
    name="user_features_source",
    path=f"{FEATURES_DIR}/user_features.parquet",
    timestamp_field="event_timestamp",
    description="Per-user history and attributes, one row per user.",
)
item_source = FileSource(
    name="item_features_source",
    path=f"{FEATURES_DIR}/item_features.parquet",
    timestamp_field="event_timestamp",
    description="Per-item content vector and popularity statistics, one row per item.",
)

# --- feature views: what the ranker reads per user and per candidate --------------------
# ttl=0 means "never expires": every row is stamped with the time of the latest
# interaction used, which may be long ago (MovieLens is from 1998) and must still serve.
user_features = FeatureView(
    name="user_features",
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(name="history", dtype=Array(String), description="last N item ids, oldest first"),
        Field(name="history_len", dtype=Int64, description="length of history"),
        Field(
            name="history_ts",
            dtype=Array(Int64),
            description="each history item's time, epoch ms (live Feedback inserts in order)",
        ),
        Field(name="attributes", dtype=String, description="JSON object of user attributes"),
    ],
    online=True,
    source=user_source,
    description="The user's recent history (attention input) and attributes.",
)
item_features = FeatureView(
    name="item_features",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="content_vec", dtype=Array(Float32), description="sentence-encoder vector"),
        Field(name="has_text", dtype=Int64, description="0: no text, content_vec is zeros"),
        Field(name="interaction_count", dtype=Int64, description="interactions seen"),
        Field(name="popularity_rank", dtype=Int64, description="1 = most interactions"),
        Field(name="is_tail", dtype=Int64, description="1: long-tail item (DESIGN.md rule)"),
        Field(name="first_seen", dtype=UnixTimestamp, description="first interaction time"),
        Field(name="title", dtype=String, description="display title"),
    ],
    online=True,
    source=item_source,
    description="Each item's content vector and popularity statistics.",
)

# --- feature service: the exact set the ranking server (and its manifest) asks for ------
ranker = FeatureService(
    name="ranker",
    features=[user_features, item_features],
    description="Everything the fusion CTR model and the long-tail re-ranker read.",
)
