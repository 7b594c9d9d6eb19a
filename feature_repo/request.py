"""Request-time features as on-demand feature views: computed from the request by the functions of
``recsys.features.request_features``, the ones a training path calls, so both sides agree by construction.

Online, the request values come with the entity rows; in point-in-time retrieval, from the entity
frame's columns of the same names.
"""

from typing import Any

from feast import Field, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Array, Float32, Int64, String, UnixTimestamp

from feature_repo.item_content import item_content

request_context = RequestSource(
    name="request_context",
    schema=[
        Field(name="request_ts", dtype=UnixTimestamp, description="When the request was made."),
        Field(name="device_type", dtype=String, description="One of recsys.vocab.DEVICE_TYPES."),
        Field(name="surface", dtype=String, description="One of recsys.vocab.SURFACES."),
    ],
    description="What every recommendation request says about itself.",
)


@on_demand_feature_view(  # type: ignore[untyped-decorator]  # Feast ships no types for it
    sources=[request_context],
    # No descriptions: Feast checks these fields against the ones it infers by running the function, and
    # a description makes them differ. hour_of_day 0-23 and day_of_week 0 (Monday) to 6 are in UTC; the
    # one-hot vectors follow recsys.vocab.DEVICE_TYPES and SURFACES (zeros when missing or unknown).
    schema=[
        Field(name="hour_of_day", dtype=Int64),
        Field(name="day_of_week", dtype=Int64),
        Field(name="device_one_hot", dtype=Array(Float32)),
        Field(name="surface_one_hot", dtype=Array(Float32)),
    ],
    mode="python",
    description="Time, device and surface of the request.",
)
def request_time_features(inputs: dict[str, Any]) -> dict[str, Any]:
    # Imported here: Feast stores this function's source and rebuilds it from that alone.
    from recsys.features.request_features import day_of_week, device_one_hot, hour_of_day, surface_one_hot

    return {
        "hour_of_day": [hour_of_day(ts) for ts in inputs["request_ts"]],
        "day_of_week": [day_of_week(ts) for ts in inputs["request_ts"]],
        "device_one_hot": [device_one_hot(d) for d in inputs["device_type"]],
        "surface_one_hot": [surface_one_hot(s) for s in inputs["surface"]],
    }


@on_demand_feature_view(  # type: ignore[untyped-decorator]  # Feast ships no types for it
    # The item on screen (a request's `current_item_id`, "" for none), joined to the content view under
    # a key of its own so a ranking request's candidate `item_id`s do not collide with it. Built here,
    # not at module level: `feast apply` would take a module-level copy for a second `item_content`.
    # No `with_name` alias: Feast 0.67 looks an on-demand view's sources up by their plain name.
    sources=[item_content.with_join_key_map({"item_id": "current_item_id"})],
    schema=[Field(name="current_item_embedding", dtype=Array(Float32))],
    mode="python",
    description="Content embedding of the item on screen; zeros without one.",
)
def current_item_features(inputs: dict[str, Any]) -> dict[str, Any]:
    # Imported here: Feast stores this function's source and rebuilds it from that alone.
    from recsys.features.content import EMBEDDING_DIM
    from recsys.features.request_features import current_item_embedding

    return {
        "current_item_embedding": [
            current_item_embedding(v, EMBEDDING_DIM) for v in inputs["item_content_embedding"]
        ]
    }
