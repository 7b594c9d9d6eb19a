"""Cross features: the per-user halves of user x item signals, and the item-item co-view table.

The ranker crosses them with each candidate at request time (``training.ranker_features``): the user's
category vectors with the item's genres, the user's recent items with the item's co-view neighbours
(``recsys.features.coview.coview_scores``).
"""

from datetime import timedelta

from feast import FeatureView, Field, FileSource
from feast.types import Array, Float32, Int64, String

from feature_repo.data_sources import offline_dir, user_features_source
from feature_repo.entities import item, user

item_coview_source = FileSource(
    name="item_coview",
    path=str(offline_dir() / "item_coview.parquet"),
    timestamp_field="feature_ts",
    created_timestamp_column="created_ts",
    description="Co-view neighbours per item, a row where they changed; events strictly before feature_ts.",
)

user_category_cross = FeatureView(
    name="user_category_cross",
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(name="user_id", dtype=String),
        Field(
            name="user_category_affinity",
            dtype=Array(Float32),
            description="Per genre, the user's positive rate, shrunk towards the user's overall rate.",
        ),
        Field(
            name="user_recency_affinity",
            dtype=Array(Float32),
            description="Genre shares with each event's weight halved every RECENCY_HALF_LIFE_DAYS.",
        ),
        Field(
            name="user_recent_items",
            dtype=Array(String),
            description="The last 20 distinct engaged items, newest first.",
        ),
    ],
    source=user_features_source,
    online=True,
    description="What the ranker crosses with each candidate item.",
)

item_coview = FeatureView(
    name="item_coview",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="item_id", dtype=String),
        Field(name="item_coview_items", dtype=Array(String), description="Most co-viewed items first."),
        Field(name="item_coview_counts", dtype=Array(Int64), description="Co-view counts, item by item."),
    ],
    source=item_coview_source,
    online=True,
    description="Items engaged with in the same sessions as this one.",
)
