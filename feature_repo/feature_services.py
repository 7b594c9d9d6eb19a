"""One versioned feature service per model: training and serving name a service, not a column list.

Change a model's inputs by adding a new version (``ranker_v2``), never by editing a published one.
"""

from feast import FeatureService

from feature_repo.cross import item_coview, user_category_cross
from feature_repo.feature_views import item_stats, user_stats
from feature_repo.item_activity import item_activity
from feature_repo.item_content import item_content
from feature_repo.request import current_item_features, request_time_features
from feature_repo.session import session_recent
from feature_repo.user_activity import user_activity

two_tower_v1 = FeatureService(
    name="two_tower_v1",
    features=[
        user_stats[["user_genre_affinity", "user_n_events"]],
        item_stats[["item_genre_vector", "item_n_events_365d", "item_age_days"]],
    ],
    description="Inputs of the two-tower retrieval model (user tower and item tower).",
)

ranker_v1 = FeatureService(
    name="ranker_v1",
    features=[user_stats, item_stats],
    description="Inputs of the LightGBM ranker: every user and item feature.",
)

ranker_v2 = FeatureService(
    name="ranker_v2",
    features=[user_stats, item_stats, user_activity, item_activity, user_category_cross, item_coview],
    description="ranker_v1 plus recent activity, the per-user cross features and item co-view neighbours.",
)

session_v1 = FeatureService(
    name="session_v1",
    features=[session_recent],
    description="The session row the serving ingress reads and extends on every event.",
)

request_context_v1 = FeatureService(
    name="request_context_v1",
    features=[request_time_features, current_item_features],
    description="Request-time features: hour of day, day of week, device, surface, item on screen.",
)

item_content_v1 = FeatureService(
    name="item_content_v1",
    features=[item_content],
    description="Item content embeddings: the item tower's content input, and the fallback for new items.",
)
