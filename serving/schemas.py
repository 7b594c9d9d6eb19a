"""The HTTP contract of the recommendation API: request and response bodies.

Requests are strict (unknown fields and coerced types are errors) so that a client bug surfaces as a
422 at once instead of as quietly wrong recommendations.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from pydantic_core import PydanticCustomError

from recsys.vocab import DEVICE_TYPES, SURFACES

DEFAULT_K = 10


class RecommendRequest(BaseModel):
    """Body of `POST /recommend`.

    >>> RecommendRequest(user_id="42", surface="homepage").k
    10
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    user_id: str = Field(min_length=1, max_length=256, description="The user to recommend for.")
    k: int = Field(default=DEFAULT_K, ge=1, description="How many items to return.")
    surface: str | None = Field(default=None, json_schema_extra={"enum": list(SURFACES)})
    device: str | None = Field(default=None, json_schema_extra={"enum": list(DEVICE_TYPES)})

    @field_validator("surface")
    @classmethod
    def _known_surface(cls, value: str | None) -> str | None:
        if value is not None and value not in SURFACES:
            raise PydanticCustomError(
                "unknown_surface", "must be one of {allowed}", {"allowed": ", ".join(SURFACES)}
            )
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str | None) -> str | None:
        if value is not None and value not in DEVICE_TYPES:
            raise PydanticCustomError(
                "unknown_device", "must be one of {allowed}", {"allowed": ", ".join(DEVICE_TYPES)}
            )
        return value


def request_model(max_k: int) -> type[RecommendRequest]:
    """The request model with `k` capped at `max_k`, the serving config's limit.

    The cap lives in configuration, so the model is derived per app rather than hard-coded.

    >>> request_model(5).model_fields["k"].metadata[-1].le
    5
    """
    if max_k < 1:
        raise ValueError(f"max_k must be at least 1, got {max_k}")
    return create_model(
        "RecommendRequest",
        __base__=RecommendRequest,
        k=(int, Field(default=min(DEFAULT_K, max_k), ge=1, le=max_k, description="How many items to return")),
    )


class RecommendedItem(BaseModel):
    """One recommended item; `position` is 1-based, the rank at which the item should be shown."""

    item_id: str
    score: float
    position: int


class ModelVersion(BaseModel):
    """Registry versions of the models that produced a list; `ranking` is None when ranking was skipped."""

    retrieval: str | None
    ranking: str | None


class RecommendResponse(BaseModel):
    """Body of a `POST /recommend` answer; `fallback` says a degraded path answered, and why."""

    request_id: str
    user_id: str
    items: list[RecommendedItem]
    model_version: ModelVersion
    experiment_variant: str = "control"
    fallback: bool = False
    fallback_reason: str | None = None


class HealthResponse(BaseModel):
    """Body of `GET /healthz`."""

    status: str
    model_version: ModelVersion
