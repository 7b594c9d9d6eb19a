"""What a user has been doing lately: recent genre taste, account age, sessions, device, activity counts.

Read from the same snapshot table as ``user_stats`` (its columns were added after ranker_v1 was
published, so they live in a view of their own).
"""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float32, Int64, String

from feature_repo.data_sources import user_features_source
from feature_repo.entities import user

user_activity = FeatureView(
    name="user_activity",
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(name="user_id", dtype=String),
        Field(
            name="user_genre_affinity_30d",
            dtype=Array(Float32),
            description="Genre shares over 30 days: a view weighs 2x its watch fraction, other positives 1.",
        ),
        Field(name="user_account_age_days", dtype=Float32, description="Days since signup; null if unknown."),
        Field(
            name="user_avg_session_minutes_7d",
            dtype=Float32,
            description="Mean first-to-last-event span of the sessions of the last 7 days; null if none.",
        ),
        Field(
            name="user_preferred_device",
            dtype=String,
            description="Most frequent device of the last 30 sessions that report one, else 'unknown'.",
        ),
        Field(name="user_n_events_7d", dtype=Int64),
        Field(name="user_n_sessions_7d", dtype=Int64),
        Field(name="user_n_sessions_30d", dtype=Int64),
        Field(name="user_n_active_days_30d", dtype=Int64, description="Distinct UTC days with an event."),
    ],
    source=user_features_source,
    online=True,
    description="A user's recent activity before the snapshot time.",
)
