"""Feature views over the snapshot tables.

No TTL: a snapshot stays valid until the next one replaces it, and entities go quiet for years in the
catalogue's history. A TTL of zero means "never expires" both in point-in-time joins (Feast's file
offline store then only requires feature_ts <= the entity timestamp) and in the online store.
"""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float32, Int64, String

from feature_repo.data_sources import item_features_source, user_features_source
from feature_repo.entities import item, user

user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(name="user_id", dtype=String),
        Field(
            name="user_genre_affinity", dtype=Array(Float32), description="Genre shares of weighted events."
        ),
        Field(name="user_n_events", dtype=Int64),
        Field(name="user_n_positive", dtype=Int64, description="like, save and purchase events."),
        Field(name="user_n_events_30d", dtype=Int64),
        Field(name="user_days_since_first_event", dtype=Float32),
        Field(name="user_days_since_last_event", dtype=Float32),
    ],
    source=user_features_source,
    online=True,
    description="What a user has done before the snapshot time.",
)

item_stats = FeatureView(
    name="item_stats",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="item_id", dtype=String),
        Field(
            name="item_genre_vector", dtype=Array(Float32), description="Multi-hot over recsys.vocab.GENRES."
        ),
        Field(name="item_n_events", dtype=Int64),
        Field(name="item_n_positive", dtype=Int64),
        Field(name="item_n_events_365d", dtype=Int64),
        Field(name="item_positive_rate", dtype=Float32, description="Shrunk towards the global rate."),
        Field(name="item_age_days", dtype=Float32, description="Days since published_at; -1 when unknown."),
    ],
    source=item_features_source,
    online=True,
    description="How an item has been received before the snapshot time.",
)
