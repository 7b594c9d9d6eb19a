"""How an item is doing lately: 7-day popularity, age in hours, completion rate.

Read from the same snapshot table as ``item_stats`` (columns added after ranker_v1 was published).
"""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Float32, Int64, String

from feature_repo.data_sources import item_features_source
from feature_repo.entities import item

item_activity = FeatureView(
    name="item_activity",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="item_id", dtype=String),
        Field(
            name="item_popularity_7d",
            dtype=Int64,
            description="Distinct users who engaged (any event but impression and skip) in the last 7 days.",
        ),
        Field(name="item_age_hours", dtype=Float32, description="Hours since published_at; null if unknown."),
        Field(
            name="item_avg_completion",
            dtype=Float32,
            description="Mean watch fraction of views with a dwell and a duration; null if none.",
        ),
    ],
    source=item_features_source,
    online=True,
    description="An item's recent reception before the snapshot time.",
)
