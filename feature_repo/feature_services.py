"""One versioned feature service per model: training and serving name a service, not a column list.

Change a model's inputs by adding a new version (``ranker_v2``), never by editing a published one.
"""

from feast import FeatureService

from feature_repo.feature_views import item_stats, user_stats

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
