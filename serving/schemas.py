"""The HTTP contract of the recommendation API: request and response bodies.

Requests are strict (unknown fields and coerced types are errors) so that a client bug surfaces as a
422 at once instead of as quietly wrong recommendations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model, field_validator
from pydantic_core import PydanticCustomError

from recsys.vocab import DEVICE_TYPES, SURFACES

DEFAULT_K = 10
MAX_LISTED_ITEMS = 500


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
    session_item_ids: list[str] = Field(
        default_factory=list, max_length=50, description="Items of the current session, oldest first."
    )
    current_item_id: str | None = Field(
        default=None, min_length=1, max_length=256, description="The item on screen (a session signal)."
    )
    exclude_item_ids: list[str] = Field(
        default_factory=list, max_length=MAX_LISTED_ITEMS, description="Items never to return."
    )
    debug: bool = Field(default=False, description="Add per-stage timings and the feature values used.")

    @field_validator("session_item_ids", "exclude_item_ids")
    @classmethod
    def _item_ids(cls, value: list[str]) -> list[str]:
        if any(not item or len(item) > 256 for item in value):
            raise PydanticCustomError("item_id", "item ids must be 1 to 256 characters")
        return value

    def context_key(self) -> tuple[object, ...]:
        """Everything but the user that decides the answer: the prediction cache's key."""
        return (
            self.k,
            self.surface,
            self.device,
            tuple(self.session_item_ids),
            self.current_item_id,
            tuple(self.exclude_item_ids),
        )

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
    # Probability that the serving policy put this item here (1.0 unless exploration is on).
    propensity: float = 1.0


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
    experiments: dict[str, str] = Field(default_factory=dict, description="Variant per experiment.")
    fallback: bool = False
    fallback_reason: str | None = None
    cached: bool = False
    debug: dict[str, Any] | None = None
    # The ranker's calibrated P(engaged) per item, aligned with `items`, for the served log (calibration
    # monitoring); None when no calibrated ranker ordered the list. Private: not part of the HTTP body.
    _probabilities: list[float] | None = PrivateAttr(default=None)

    @property
    def probabilities(self) -> list[float] | None:
        return self._probabilities

    def set_probabilities(self, probabilities: Sequence[float] | None) -> None:
        """Attach the items' calibrated probabilities (kept by `model_copy`, so cached answers keep them)."""
        if probabilities is not None and len(probabilities) != len(self.items):
            raise ValueError(f"{len(probabilities)} probabilities for {len(self.items)} items")
        self._probabilities = None if probabilities is None else [float(p) for p in probabilities]


class HealthResponse(BaseModel):
    """Body of `GET /healthz`."""

    status: str
    model_version: ModelVersion


class ReadyResponse(BaseModel):
    """Body of `GET /readyz`: models loaded and the online store answering."""

    status: str
    model_version: ModelVersion
    checks: dict[str, str]


class SimilarItemsResponse(BaseModel):
    """Body of `GET /items/{item_id}/similar`: the nearest items in the retrieval embedding."""

    item_id: str
    items: list[RecommendedItem]
    model_version: str


class RejectedEvent(BaseModel):
    index: int
    error: str


class EventsResponse(BaseModel):
    """Body of a `POST /events` answer: how many events were stored, and why the others were not."""

    accepted: int
    rejected: list[RejectedEvent] = Field(default_factory=list)


def printable_name(name: str, limit: int = 80) -> str:
    """A client-supplied field name as it may appear in a one-line message: escaped, and cut when long.

    >>> printable_name("k"), printable_name("a\\nb"), len(printable_name("x" * 500)) < 100
    ('k', "'a\\\\nb'", True)
    """
    if name.isprintable() and len(name) <= limit:
        return name
    return ascii(name[:limit]) + ("..." if len(name) > limit else "")
