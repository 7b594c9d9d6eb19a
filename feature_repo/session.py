"""Session features, pushed by the serving ingress when events arrive (``recsys.features.session_features``).

Keyed by user, not by session: requests carry ``user_id`` and no session id, events carry both, and
"the session" serving needs is the user's recent activity across devices; a session entity would need
every request to name its session first. The 1-hour TTL ends a session an hour after its last push.

The batch source holds the same rows replayed from an event log (for training and backfills); the online
store is written by pushes only (``recsys.features.store.materialize`` skips views with a push source, so
a re-materialisation never overwrites live sessions with older rows).
"""

from feast import FeatureView, Field, FileSource, PushSource
from feast.types import Array, Float32, Int64, String

from feature_repo.data_sources import offline_dir
from feature_repo.entities import user
from recsys.features.session_features import (
    CATEGORY_COUNTS,
    CREATED_TS,
    FEATURE_TS,
    KEPT_EVENT_MS,
    KEPT_ITEMS,
    LAST_ITEMS,
    SESSION_FEATURES_FILE,
    SESSION_PUSH_SOURCE,
    SESSION_TTL,
    SESSION_VIEW,
)

session_push = PushSource(
    name=SESSION_PUSH_SOURCE,
    batch_source=FileSource(
        name="session_features",
        path=str(offline_dir() / SESSION_FEATURES_FILE),
        timestamp_field=FEATURE_TS,
        created_timestamp_column=CREATED_TS,
        description="Session rows replayed from the event log (feature_ts: when serving saw the events).",
    ),
    description="Session rows pushed by the ingress on POST /events.",
)

session_recent = FeatureView(
    name=SESSION_VIEW,
    entities=[user],
    ttl=SESSION_TTL,
    schema=[
        Field(name="user_id", dtype=String),
        Field(
            name=LAST_ITEMS,
            dtype=Array(String),
            description="The last 10 distinct engaged items, oldest first (event time).",
        ),
        Field(
            name=CATEGORY_COUNTS,
            dtype=Array(Float32),
            description="Engaged events per genre (recsys.vocab.GENRES), 10 minutes before feature_ts.",
        ),
        Field(
            name=KEPT_ITEMS,
            dtype=Array(String),
            description="Items of the engaged events the next update needs (state, not a model input).",
        ),
        Field(name=KEPT_EVENT_MS, dtype=Array(Int64), description="Their event times, ms since the epoch."),
    ],
    source=session_push,
    online=True,
    description="What the user engaged with in the current session.",
)
