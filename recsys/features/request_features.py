"""Request-time features: what the request itself says, computed the same way in training and serving.

Plain functions of one request's values; the on-demand feature views of ``feature_repo/request.py`` call
them for serving and point-in-time retrieval, and a training path builds its columns with them too.
Times are read in UTC: the log has no user time zone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from recsys.vocab import DEVICE_TYPES, SURFACES


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"request time {moment.isoformat()} has no time zone")
    return moment.astimezone(UTC)


def hour_of_day(moment: datetime) -> int:
    """0-23, in UTC.

    >>> from datetime import timedelta, timezone
    >>> hour_of_day(datetime(2026, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-2))))
    1
    """
    return _utc(moment).hour


def day_of_week(moment: datetime) -> int:
    """0 (Monday) to 6 (Sunday), in UTC.

    >>> day_of_week(datetime(2026, 3, 1, 12, tzinfo=UTC))  # a Sunday
    6
    """
    return _utc(moment).weekday()


def one_hot(value: str | None, vocabulary: Sequence[str]) -> list[float]:
    """1.0 at `value`'s place in `vocabulary`; all zeros for a missing or unknown value.

    >>> one_hot("b", ("a", "b", "c")), one_hot(None, ("a", "b"))
    ([0.0, 1.0, 0.0], [0.0, 0.0])
    """
    return [1.0 if value == known else 0.0 for known in vocabulary]


def device_one_hot(device_type: str | None) -> list[float]:
    """Over ``recsys.vocab.DEVICE_TYPES``."""
    return one_hot(device_type, DEVICE_TYPES)


def surface_one_hot(surface: str | None) -> list[float]:
    """Over ``recsys.vocab.SURFACES``."""
    return one_hot(surface, SURFACES)


def current_item_embedding(embedding: Sequence[float] | None, dim: int) -> list[float]:
    """The content embedding of the item on screen; `dim` zeros when there is none (no item, or one
    without content).

    >>> current_item_embedding([0.6, 0.8], 2), current_item_embedding(None, 2)
    ([0.6, 0.8], [0.0, 0.0])
    """
    if embedding is None or len(embedding) == 0:
        return [0.0] * dim
    return [float(v) for v in embedding]
