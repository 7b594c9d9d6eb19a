"""Names, weights and Arrow layouts of the offline feature tables (docs/architecture.md).

The offline tables are the contract between the Spark job, Feast and the models, so their layout is
written down once here and enforced when the tables are written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recsys.vocab import EVENT_TYPES, GENRES, POSITIVE_EVENT_TYPES

if TYPE_CHECKING:
    import pyarrow as pa

USER_FEATURES_FILE = "user_features.parquet"
ITEM_FEATURES_FILE = "item_features.parquet"
# Beside the offline tables: which dataset version they were computed from, and with which settings.
BUILD_INFO_FILE = "features_build.json"

FEATURE_TS = "feature_ts"
# Feast breaks ties between rows with the same feature_ts by this column. It equals feature_ts, so a
# recomputation writes byte-identical tables and Feast's created-timestamp filter never hides a row.
CREATED_TS = "created_ts"

# How much one event says about a user's taste, spread evenly over the item's genres. A skip is a
# negative signal, but it must not make affinities negative, so it weighs nothing.
EVENT_WEIGHTS: dict[str, float] = {
    "impression": 0.0,
    "click": 0.5,
    "view": 0.5,
    "like": 1.0,
    "save": 1.0,
    "add_to_cart": 0.5,
    "purchase": 1.0,
    "skip": 0.0,
}
assert set(EVENT_WEIGHTS) == set(EVENT_TYPES)
assert all(EVENT_WEIGHTS[kind] == 1.0 for kind in POSITIVE_EVENT_TYPES)

USER_WINDOW_DAYS = 30
ITEM_WINDOW_DAYS = 365
# item_positive_rate shrinks towards the global positive rate as if this many extra events had been seen.
POSITIVE_RATE_PRIOR_EVENTS = 5.0

USER_FEATURES: tuple[str, ...] = (
    "user_genre_affinity",
    "user_n_events",
    "user_n_positive",
    "user_n_events_30d",
    "user_days_since_first_event",
    "user_days_since_last_event",
)
ITEM_FEATURES: tuple[str, ...] = (
    "item_genre_vector",
    "item_n_events",
    "item_n_positive",
    "item_n_events_365d",
    "item_positive_rate",
    "item_age_days",
)
N_GENRES = len(GENRES)


def user_features_schema() -> pa.Schema:
    """Arrow layout of ``offline/user_features.parquet``."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            ("user_id", pa.string()),
            (FEATURE_TS, ts),
            ("user_genre_affinity", pa.list_(pa.float32())),
            ("user_n_events", pa.int64()),
            ("user_n_positive", pa.int64()),
            ("user_n_events_30d", pa.int64()),
            ("user_days_since_first_event", pa.float32()),
            ("user_days_since_last_event", pa.float32()),
            (CREATED_TS, ts),
        ]
    )


def item_features_schema() -> pa.Schema:
    """Arrow layout of ``offline/item_features.parquet``."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            ("item_id", pa.string()),
            (FEATURE_TS, ts),
            ("item_genre_vector", pa.list_(pa.float32())),
            ("item_n_events", pa.int64()),
            ("item_n_positive", pa.int64()),
            ("item_n_events_365d", pa.int64()),
            ("item_positive_rate", pa.float32()),
            ("item_age_days", pa.float32()),
            (CREATED_TS, ts),
        ]
    )
