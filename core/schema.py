"""Column names, file names and the head/tail rule shared by every part of tailrank.

Everything that reads or writes the canonical tables, the Feast sources or the model
artifacts names columns and files through these constants, so the parts cannot drift.
This module imports only numpy and pandas: serving may use it without torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# --- canonical tables (written by `python -m training.data`) -------------------------
USER_ID = "user_id"  # str
ITEM_ID = "item_id"  # str
TIMESTAMP = "timestamp"  # datetime64[ns, UTC]
EVENT = "event"  # str: view / click / cart / purchase / rating ...
VALUE = "value"  # float64, NaN when the source has none (a rating, a price paid)

INTERACTIONS_FILE = "interactions.parquet"  # all interactions, deduplicated
ITEMS_FILE = "items.parquet"  # item_id + text and numeric columns
USERS_FILE = "users.parquet"  # user_id + attribute columns (may have none)
TRAIN_FILE = "train.parquet"  # evaluation split: all but each user's last two
VALID_FILE = "valid.parquet"  # each user's second-last interaction
TEST_FILE = "test.parquet"  # each user's last interaction
SUMMARY_FILE = "summary.json"  # counts: users, items, events, head/tail, dropped rows

# --- Feast offline sources (written by `python -m training.features`) ----------------
EVENT_TIMESTAMP = "event_timestamp"  # Feast's event time column on every feature row
ITEM_FEATURES_FILE = "item_features.parquet"
USER_FEATURES_FILE = "user_features.parquet"

# item feature columns
CONTENT_VEC = "content_vec"  # list<float32>, the sentence-encoder vector of the text
HAS_TEXT = "has_text"  # int64 0/1: 0 means no text, content_vec is all zeros
INTERACTION_COUNT = "interaction_count"  # int64
POPULARITY_RANK = "popularity_rank"  # int64, 1 = most interactions
IS_TAIL = "is_tail"  # int64 0/1, by head_tail_flags() below
FIRST_SEEN = "first_seen"  # datetime64[ns, UTC] of the item's first interaction (NaT if none)
TITLE = "title"  # str, for display (empty when the item has none)

# user feature columns
HISTORY = "history"  # list<str>: the last N item ids, oldest first
HISTORY_LEN = "history_len"  # int64
HISTORY_TS = "history_ts"  # list<int64>: each history item's time, epoch ms (same order)
USER_ATTRIBUTES = "attributes"  # str: JSON object of the user's attribute columns

# Feast names
USER_ENTITY = "user"
ITEM_ENTITY = "item"
USER_VIEW = "user_features"
ITEM_VIEW = "item_features"
FEATURE_SERVICE = "ranker"
FEATURES_SUMMARY_FILE = "features_summary.json"  # encoder, dims, counts of the features step

HEAD_SHARE = 0.2  # head = top 20% of items by interaction count


def id_order_codes(ids: pd.Series | np.ndarray | pd.Index) -> np.ndarray:
    """Integer codes whose order is the "id order" that breaks every tie in tailrank.

    DESIGN.md breaks ties "by item id". Ids are strings, but most catalogues (MovieLens
    among them) number their items, and "10" < "9" as strings would make the tie order
    depend on digit counts. **Decision:** when every id is a decimal integer, ids order as
    numbers (leading zeros next, then the string, so distinct ids never tie); otherwise
    as strings. This matches the order that published MovieLens figures use.
    """
    values = pd.Series(np.asarray(ids, dtype=object)).astype(str)
    codes, uniques = pd.factorize(values, sort=True)
    uniq = pd.Series(uniques, dtype=object)
    if len(uniq) and uniq.str.fullmatch(r"[0-9]+").all():
        stripped = uniq.str.lstrip("0")
        key = pd.DataFrame({"len": stripped.str.len(), "digits": stripped, "raw": uniq})
        rank = np.empty(len(uniq), dtype=np.int64)
        rank[key.sort_values(["len", "digits", "raw"], kind="mergesort").index.to_numpy()] = (
            np.arange(len(uniq))
        )
        return rank[codes]
    return codes.astype(np.int64)


def head_tail_flags(counts: pd.Series) -> pd.Series:
    """Return is_tail (int64 0/1) for items given their interaction counts.

    ``counts`` is indexed by item id and must hold every item of the catalogue (zeros
    included). Head is the top ``HEAD_SHARE`` of items by count, ties broken by item id
    ascending in ``id_order_codes`` order (DESIGN.md); everything else is tail.
    """
    items = counts.index.astype(str)
    order = pd.DataFrame({"item": items, "n": counts.to_numpy(), "id": id_order_codes(items)})
    order = order.sort_values(["n", "id"], ascending=[False, True], kind="mergesort")
    n_head = int(np.floor(HEAD_SHARE * len(order)))
    is_tail = pd.Series(1, index=order["item"].to_numpy(), dtype="int64")
    is_tail.iloc[:n_head] = 0
    return is_tail.reindex(counts.index.astype(str)).set_axis(counts.index)


def gini(exposure: np.ndarray) -> float:
    """Gini coefficient of non-negative exposure counts: 0 = all items shown equally,
    (n-1)/n = one item has every exposure. Offline metrics and the live exposure report
    both use this one definition."""
    x = np.sort(np.asarray(exposure, dtype=np.float64))
    n, total = x.size, x.sum()
    if n == 0 or total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * x) / (n * total))
