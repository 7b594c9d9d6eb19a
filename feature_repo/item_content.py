"""Item content embeddings: all-MiniLM-L6-v2 over each item's title, genres and tags (384 floats, unit norm).

Written by ingest beside each dataset version and copied to the offline store by `recsys features`
(recsys/features/content.py). A row's ``feature_ts`` is the item's publication, so a point-in-time join
never gives an event the content of an item that did not exist yet. No TTL: content does not go stale.
"""

from datetime import timedelta

from feast import FeatureView, Field, FileSource
from feast.types import Array, Float32, String

from feature_repo.data_sources import offline_dir
from feature_repo.entities import item
from recsys.features.content import CONTENT_FEATURE, CONTENT_FILE

item_content_source = FileSource(
    name="item_content",
    path=str(offline_dir() / CONTENT_FILE),
    timestamp_field="feature_ts",
    created_timestamp_column="created_ts",
    description="One row per item: its content embedding, valid from its publication.",
)

item_content = FeatureView(
    name="item_content",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="item_id", dtype=String),
        Field(
            name=CONTENT_FEATURE,
            dtype=Array(Float32),
            description="Unit-norm sentence embedding (384) of the item's text.",
        ),
    ],
    source=item_content_source,
    online=True,
    description="What an item is about, from its text: known for items nobody has interacted with yet.",
)
