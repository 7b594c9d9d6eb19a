"""Platt calibration of ranker scores: lambdarank scores are on an arbitrary scale, probabilities are not.

Two lambdarank models trained from the same rows with another seed order items alike but put their
scores on unrelated scales, so no threshold, blend or distribution check can read a raw score. A
calibrator maps the raw score s to P(engaged) = sigmoid(slope * s + intercept), fitted by logistic
regression on rows the trees were not fitted on.

Platt rather than isotonic: two parameters fit a few hundred held-out rows without overfitting, and the
map is strictly monotone, so it never reorders candidates and never creates ties (an isotonic step
function would put most rows on a handful of values and collapse the quantile bins of a PSI).

When the calibration rows kept negatives at a rate r < 1, the fitted odds are 1/r too high; the
correction of `recsys.ingest.pairs.corrected_probability` shrinks them back. The ranker's calibration
rows keep every candidate of their users, so training passes r = 1 (the identity).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from recsys.ingest.pairs import corrected_probability

CALIBRATION_FILE = "calibration.json"
METHOD = "platt"
# Logistic regression without a meaningful penalty: the fit has two parameters and hundreds of rows.
INVERSE_REGULARISATION = 1e6
# A one-class sample has no slope to learn; its rate is kept away from 0 and 1 so log-odds stay finite.
RATE_FLOOR = 1e-6


class CalibrationError(ValueError):
    """Calibration rows that cannot be fitted, or a calibration file that cannot be read."""


@dataclass(frozen=True)
class PlattCalibrator:
    """P(engaged | raw score) = corrected(sigmoid(slope * score + intercept), negative_rate).

    Attributes:
        slope, intercept: the logistic map from raw score to log-odds.
        negative_rate: share of negatives kept in the calibration rows (1.0: none dropped).
        n_rows, positive_rate: the calibration sample, for the record.
    """

    slope: float
    intercept: float
    negative_rate: float = 1.0
    n_rows: int = 0
    positive_rate: float = math.nan

    def probabilities(self, scores: ArrayLike) -> np.ndarray:
        """Calibrated probabilities of raw ranker scores, same shape.

        >>> PlattCalibrator(slope=2.0, intercept=0.0).probabilities([0.0]).tolist()
        [0.5]
        """
        s = np.asarray(scores, dtype=np.float64)
        logits = np.clip(self.slope * s + self.intercept, -50.0, 50.0)
        return corrected_probability(1.0 / (1.0 + np.exp(-logits)), self.negative_rate)

    def to_json(self) -> dict[str, Any]:
        return {"method": METHOD, **asdict(self)}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> PlattCalibrator:
        if payload.get("method") != METHOD:
            raise CalibrationError(
                f"unknown calibration method {payload.get('method')!r}, expected {METHOD!r}"
            )
        try:
            return cls(
                slope=float(payload["slope"]),
                intercept=float(payload["intercept"]),
                negative_rate=float(payload["negative_rate"]),
                n_rows=int(payload["n_rows"]),
                positive_rate=float(payload["positive_rate"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CalibrationError(f"malformed calibration: {err}") from None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> PlattCalibrator:
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CalibrationError(f"{path} is not JSON: {err}") from None
        if not isinstance(payload, dict):
            raise CalibrationError(f"{path} does not hold a calibration object")
        return cls.from_json(payload)


def fit_platt(scores: ArrayLike, labels: ArrayLike, negative_rate: float = 1.0) -> PlattCalibrator:
    """Fit the logistic map from raw scores to 0/1 labels.

    Args:
        scores: (n,) raw ranker scores of the calibration rows.
        labels: (n,) 1 for an engaged candidate, else 0.
        negative_rate: the share of negatives the calibration rows kept, in (0, 1]; the calibrated
            probability is corrected back to the full population.

    A sample with one class only (no positive, or no negative), or whose fitted slope is not positive
    (scores that do not rise with engagement), gets slope 0 and its own rate: monotone, never reversed.

    Raises:
        CalibrationError: mismatched lengths, no rows, labels other than 0/1, or non-finite scores.
    """
    from sklearn.linear_model import LogisticRegression

    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if s.shape != y.shape:
        raise CalibrationError(f"{s.size} scores for {y.size} labels")
    if s.size == 0:
        raise CalibrationError("no rows to calibrate on")
    if not np.isin(y, (0.0, 1.0)).all():
        raise CalibrationError("calibration labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise CalibrationError("calibration scores must be finite")
    if not 0 < negative_rate <= 1:
        raise CalibrationError(f"negative_rate must be in (0, 1], got {negative_rate}")
    rate = float(y.mean())
    clipped = min(max(rate, RATE_FLOOR), 1 - RATE_FLOOR)
    slope, intercept = 0.0, math.log(clipped / (1 - clipped))
    if 0.0 < rate < 1.0 and np.ptp(s) > 0:
        model = LogisticRegression(C=INVERSE_REGULARISATION, max_iter=1000)
        model.fit(s.reshape(-1, 1), y.astype(np.int64))
        # A falling fit would make the probability contradict the order the ranker serves; like an
        # isotonic fit, such a ranker gets the flat map (its base rate): it knows nothing calibratable.
        if model.coef_[0, 0] > 0:
            slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    return PlattCalibrator(
        slope=slope, intercept=intercept, negative_rate=negative_rate, n_rows=int(s.size), positive_rate=rate
    )


def logistic(scores: ArrayLike) -> np.ndarray:
    """The plain reading of a raw score as log-odds: what an uncalibrated ranker's 'probability' is."""
    s = np.clip(np.asarray(scores, dtype=np.float64), -50.0, 50.0)
    return np.asarray(1.0 / (1.0 + np.exp(-s)))
