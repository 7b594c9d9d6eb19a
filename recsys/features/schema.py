"""Names, weights and Arrow layouts of the offline feature tables (docs/architecture.md).

The offline tables are the contract between the Spark job, Feast and the models, so their layout is
written down once here and enforced when the tables are written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from recsys.vocab import DEVICE_TYPES, EVENT_TYPES, GENRES, POSITIVE_EVENT_TYPES

if TYPE_CHECKING:
    import pyarrow as pa

USER_FEATURES_FILE = "user_features.parquet"
ITEM_FEATURES_FILE = "item_features.parquet"
# Item-item co-view neighbours: a row only where an item's neighbours changed (see docs/features.md).
COVIEW_FILE = "item_coview.parquet"
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

# The spec's affinity weights (user_genre_affinity_30d, user_recency_affinity): a view weighs
# WATCH_WEIGHT times its watch fraction (dwell over the item's duration, clipped to [0, 1]), the other
# positive events weigh 1, everything else nothing. A view whose fraction is unknown (no dwell, or an item
# without a duration, as in MovieLens) is taken as watched halfway, so it weighs as much as a like.
WATCH_WEIGHT = 2.0
DEFAULT_WATCH_FRACTION = 0.5
AFFINITY_WINDOW_DAYS = 30
# Activity windows: average session length and short-term counts (user), popularity (item).
SHORT_WINDOW_DAYS = 7
# Each table reads its short and long windows from one range join.
assert min(AFFINITY_WINDOW_DAYS, ITEM_WINDOW_DAYS) >= SHORT_WINDOW_DAYS
# user_preferred_device is the most frequent device of this many most recent sessions.
DEVICE_SESSIONS = 30
UNKNOWN_DEVICE = "unknown"
# user_category_affinity shrinks each genre's positive rate towards the user's overall rate as if this
# many extra events had been seen in that genre.
CATEGORY_PRIOR_EVENTS = 2.0
# The one half-life of every recency weight, in training (the batch job) and at serving.
RECENCY_HALF_LIFE_DAYS = 30.0
# The batch job sums weights 2^((t - first event) / half-life); beyond this many half-lives a double
# overflows, so a longer history is refused rather than silently wrong.
MAX_HALF_LIVES = 1000.0
# Co-view: an engaged event is paired with the next COVIEW_WINDOW engaged events of the same session; a
# pair seen fewer than COVIEW_MIN_COUNT times is noise; each item keeps its COVIEW_NEIGHBOURS most
# co-viewed items. A user's recent items are the last RECENT_ITEMS distinct engaged items.
COVIEW_WINDOW = 5
COVIEW_MIN_COUNT = 2
COVIEW_NEIGHBOURS = 30
RECENT_ITEMS = 20


def recency_weight(age_days: float) -> float:
    """How much an event ``age_days`` old counts against one happening now: halves every half-life.

    >>> [recency_weight(days) for days in (0.0, RECENCY_HALF_LIFE_DAYS, 2 * RECENCY_HALF_LIFE_DAYS)]
    [1.0, 0.5, 0.25]
    """
    return float(0.5 ** (age_days / RECENCY_HALF_LIFE_DAYS))


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
# Views added after user_stats and item_stats, over the same snapshot tables (a published view is never
# edited; its table may gain columns).
USER_ACTIVITY_FEATURES: tuple[str, ...] = (
    "user_genre_affinity_30d",
    "user_account_age_days",
    "user_avg_session_minutes_7d",
    "user_preferred_device",
    "user_n_events_7d",
    "user_n_sessions_7d",
    "user_n_sessions_30d",
    "user_n_active_days_30d",
)
USER_CROSS_FEATURES: tuple[str, ...] = (
    "user_category_affinity",
    "user_recency_affinity",
    "user_recent_items",
)
ITEM_ACTIVITY_FEATURES: tuple[str, ...] = ("item_popularity_7d", "item_age_hours", "item_avg_completion")
COVIEW_FEATURES: tuple[str, ...] = ("item_coview_items", "item_coview_counts")
N_GENRES = len(GENRES)
assert UNKNOWN_DEVICE not in DEVICE_TYPES


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
            ("user_genre_affinity_30d", pa.list_(pa.float32())),
            ("user_account_age_days", pa.float32()),
            ("user_avg_session_minutes_7d", pa.float32()),
            ("user_preferred_device", pa.string()),
            ("user_n_events_7d", pa.int64()),
            ("user_n_sessions_7d", pa.int64()),
            ("user_n_sessions_30d", pa.int64()),
            ("user_n_active_days_30d", pa.int64()),
            ("user_category_affinity", pa.list_(pa.float32())),
            ("user_recency_affinity", pa.list_(pa.float32())),
            ("user_recent_items", pa.list_(pa.string())),
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
            ("item_popularity_7d", pa.int64()),
            ("item_age_hours", pa.float32()),
            ("item_avg_completion", pa.float32()),
            (CREATED_TS, ts),
        ]
    )


def coview_schema() -> pa.Schema:
    """Arrow layout of ``offline/item_coview.parquet``: neighbours most co-viewed first."""
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            ("item_id", pa.string()),
            (FEATURE_TS, ts),
            ("item_coview_items", pa.list_(pa.string())),
            ("item_coview_counts", pa.list_(pa.int64())),
            (CREATED_TS, ts),
        ]
    )
