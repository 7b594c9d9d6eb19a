"""Calibration of the served ranker: the probability it gave each served item against that item's click.

The served log (`serving.served`) records, per answer, the items and the ranker's calibrated P(engaged)
of each; the event log records clicks with the `request_id` of the answer they react to. A served item
is one impression judged: positive when a click carries its request id and item id (as
:func:`monitoring.business.click_through_rate` joins them), negative otherwise. A click on an item the
answer did not hold, or under another request id, counts for nothing.

Answers without probabilities (fallbacks, a ranker without calibration, lines written before the field
existed) are left out, and a window with none is reported as unavailable, never as a zero. Nothing here
reads files: :mod:`monitoring.monitor` does the reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from evaluation.calibration import expected_calibration_error
from monitoring.alerts import Observation
from monitoring.business import clicked_pairs

# Below this many judged impressions a window's calibration is noise, not signal. A perfectly calibrated
# ranker simulated at 2,000 impressions (10 bins, 400 draws) gives ECE p99 0.037 and |gap| p99 0.024 with
# predictions spread uniformly over [0, 1], 0.017 and 0.015 with CTR-like ones (Beta(1, 15)): under the
# rules' 0.05 and 0.03 (monitoring/rules.yaml). At 500 impressions the uniform p99s are 0.075 and 0.044.
MIN_IMPRESSIONS = 2000
SUBJECT = "ranker"


@dataclass(frozen=True)
class ServedCalibration:
    """Calibration of one window's served impressions.

    Attributes:
        ece: expected calibration error (10 equal-width bins, `evaluation.calibration`).
        mean_predicted: mean calibrated probability of the impressions.
        observed_ctr: share of the impressions clicked under their own request.
        impressions: served items with a probability, judged.
    """

    ece: float
    mean_predicted: float
    observed_ctr: float
    impressions: int

    @property
    def gap(self) -> float:
        """Mean predicted minus observed: above 0 the ranker over-predicts, below it under-predicts."""
        return self.mean_predicted - self.observed_ctr


def served_predictions(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """(request_id, item_id, probability) of every served item that carries a probability.

    Rows without `probabilities` (older lines), with null (unranked answers), or with a list that does not
    line up with `item_ids` or holds a value outside [0, 1] (a damaged line) are skipped; an item served
    twice under one request counts once.

    >>> served_predictions([{"request_id": "r1", "item_ids": ["a", "b"], "probabilities": [0.2, 0.1]},
    ...                     {"request_id": "r2", "item_ids": ["a"]}]).to_dict("list")
    {'request_id': ['r1', 'r1'], 'item_id': ['a', 'b'], 'probability': [0.2, 0.1]}
    """
    requests: list[str] = []
    items: list[str] = []
    probabilities: list[float] = []
    for row in rows:
        values = row.get("probabilities")
        item_ids = row.get("item_ids") or []
        if values is None or len(values) != len(item_ids) or row.get("request_id") is None:
            continue
        if not all(isinstance(p, int | float) and 0.0 <= p <= 1.0 for p in values):
            continue  # NaN fails the range check too
        requests += [str(row["request_id"])] * len(item_ids)
        items += [str(item) for item in item_ids]
        probabilities += [float(p) for p in values]
    frame = pd.DataFrame({"request_id": requests, "item_id": items, "probability": probabilities})
    return frame.drop_duplicates(["request_id", "item_id"]).reset_index(drop=True)


def served_calibration(
    rows: Iterable[Mapping[str, Any]], events: pd.DataFrame, n_bins: int = 10
) -> ServedCalibration | None:
    """Calibration of the served items of `rows` against the clicks in `events`; None without any
    served probability (the signal is unavailable, not zero)."""
    predictions = served_predictions(rows)
    if predictions.empty:
        return None
    joined = predictions.merge(
        clicked_pairs(events).astype(str), on=["request_id", "item_id"], how="left", indicator=True
    )
    labels = (joined["_merge"] == "both").to_numpy(dtype=np.int64)
    probabilities = joined["probability"].to_numpy(dtype=np.float64)
    return ServedCalibration(
        ece=expected_calibration_error(labels, probabilities, n_bins),
        mean_predicted=float(probabilities.mean()),
        observed_ctr=float(labels.mean()),
        impressions=len(labels),
    )


def _judged(calibration: ServedCalibration | None, min_impressions: int) -> ServedCalibration | None:
    return calibration if calibration is not None and calibration.impressions >= min_impressions else None


def calibration_observations(
    reference: ServedCalibration | None,
    current: ServedCalibration | None,
    window: str,
    since: datetime,
    min_impressions: int = MIN_IMPRESSIONS,
) -> list[Observation]:
    """``calibration_ece``, ``calibration_gap``, ``calibration_mean_predicted``, ``calibration_observed_ctr``
    and ``calibration_impressions`` of the current window, the reference window's values as baselines.

    A window below `min_impressions` is not judged: the current one then yields only its impression count
    (nothing at all without served probabilities), the reference one no baseline.
    """
    if current is None:
        return []
    count = Observation(
        "calibration_impressions", float(current.impressions), SUBJECT, window=window, since=since
    )
    judged, before = _judged(current, min_impressions), _judged(reference, min_impressions)
    if judged is None:
        return [count]
    values = {
        "calibration_ece": (judged.ece, before.ece if before else None),
        "calibration_gap": (judged.gap, before.gap if before else None),
        "calibration_mean_predicted": (judged.mean_predicted, before.mean_predicted if before else None),
        "calibration_observed_ctr": (judged.observed_ctr, before.observed_ctr if before else None),
    }
    return [count] + [
        Observation(metric, value, SUBJECT, baseline=baseline, window=window, since=since)
        for metric, (value, baseline) in values.items()
    ]


def calibration_note(current: ServedCalibration | None, min_impressions: int = MIN_IMPRESSIONS) -> str | None:
    """Why the window's calibration was not judged, or None when it was."""
    if current is None:
        return "calibration unavailable: no served answer of the window carries ranker probabilities"
    if current.impressions < min_impressions:
        return (
            f"calibration unavailable: {current.impressions} impressions with ranker probabilities, "
            f"fewer than the {min_impressions} it needs"
        )
    return None
