"""The metrics document (`metrics.json`) of one evaluation: a fixed schema, built from plain values.

Schema version 1, top-level keys (a test pins them; docs/evaluation.md explains each):

- `schema_version` (int), `dataset_version`, `split` ("test" | "validation"), `model_ref` (the alias or
  version asked for), `model_versions` ({"retrieval": v, "ranking": v}), `n_users`, `ks`, `curve_ks`,
  `n_candidates`, `seconds` (wall time of the evaluation);
- `models`: model row -> metric key ("recall@10", ...) -> value; rows are popularity, the CF baselines,
  retrieval, retrieval+ranking, champion (when another system is evaluated) and served (the replay);
- `curves`: model row -> ranking metrics at every K of `curve_ks` (the metric-vs-K plot);
- `slices`: slice name -> {"n_users": int, "models": row -> metric -> value};
- `calibration`: the ranker's {"ece", "n", "positive_rate", "curve": {edges, mean_prediction, frequency,
  count}, "calibrated", "raw_ece", "raw_curve"} over its candidates: its calibrated probabilities, and
  its raw score passed through a logistic function;
- `replay`: {"fallbacks": reason -> users} of the served row, or null when replay is off;
- `comparisons`: retrieval+ranking against every other row on the same users, per metric (NDCG at the
  first K, recall at the last): {"system", "other", "metric", "n_users", "difference", "low", "high",
  "verdict"}, a paired bootstrap 95% interval of the mean per-user difference (evaluation/compare.py);
- `report`: the HTML report's file name, next to metrics.json.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evaluation.calibration import expected_calibration_error, reliability_curve

METRICS_SCHEMA_VERSION = 1
DOCUMENT_KEYS: tuple[str, ...] = (
    "schema_version",
    "dataset_version",
    "split",
    "model_ref",
    "model_versions",
    "n_users",
    "ks",
    "curve_ks",
    "n_candidates",
    "seconds",
    "models",
    "curves",
    "slices",
    "calibration",
    "replay",
    "comparisons",
    "report",
)


def curve_ks(ks: Sequence[int]) -> list[int]:
    """The cut-offs of the metric-vs-K curve: 1, 5, 10, 20, 50, 100, ... up to max(ks), plus `ks`.

    >>> curve_ks([10, 50])
    [1, 5, 10, 20, 50]
    """
    top = max(ks)
    grid = {k for k in (1, 5, 10, 20, 50, 100, 200, 500) if k <= top}
    return sorted(grid | set(ks))


def _curve_json(labels: np.ndarray, probabilities: np.ndarray, n_bins: int) -> dict[str, Any]:
    curve = reliability_curve(labels, probabilities, n_bins)
    return {
        "edges": curve.edges.tolist(),
        "mean_prediction": [None if math.isnan(v) else float(v) for v in curve.mean_prediction],
        "frequency": [None if math.isnan(v) else float(v) for v in curve.frequency],
        "count": [int(c) for c in curve.count],
    }


def calibration_summary(
    labels: np.ndarray, scores: np.ndarray, probabilities: np.ndarray | None = None, n_bins: int = 10
) -> dict[str, Any]:
    """ECE and the reliability curve of the ranker's calibrated probabilities against 0/1 labels, with
    the same for its raw scores read through a logistic (`raw_ece`, `raw_curve`).

    Lambdarank scores are not probabilities; the logistic is the plain reading of a score as log-odds,
    so the raw figures show what calibration fixes. A ranker without calibration (`probabilities` None
    or NaN) reports its raw reading as the main figures, with `calibrated` false.

    >>> summary = calibration_summary(np.array([0, 1]), np.array([-50.0, 50.0]), np.array([0.0, 1.0]))
    >>> summary["ece"], summary["raw_ece"], summary["n"], summary["positive_rate"], summary["calibrated"]
    (0.0, 0.0, 2, 0.5, True)
    """
    labels = np.asarray(labels, dtype=float)
    raw = 1.0 / (1.0 + np.exp(-np.clip(np.asarray(scores, dtype=float), -50, 50)))
    calibrated = probabilities is not None and not np.isnan(np.asarray(probabilities, dtype=float)).any()
    if labels.size == 0:
        return {
            "ece": math.nan,
            "n": 0,
            "positive_rate": math.nan,
            "curve": None,
            "calibrated": calibrated,
            "raw_ece": math.nan,
            "raw_curve": None,
        }
    main = np.asarray(probabilities, dtype=float) if calibrated else raw
    return {
        "ece": round(expected_calibration_error(labels, main, n_bins), 12),
        "n": int(labels.size),
        "positive_rate": float(labels.mean()),
        "curve": _curve_json(labels, main, n_bins),
        "calibrated": calibrated,
        "raw_ece": round(expected_calibration_error(labels, raw, n_bins), 12),
        "raw_curve": _curve_json(labels, raw, n_bins),
    }


def build_document(
    *,
    dataset_version: str,
    split: str,
    model_ref: str,
    model_versions: Mapping[str, str],
    n_users: int,
    ks: Sequence[int],
    n_candidates: int,
    seconds: float,
    models: Mapping[str, Mapping[str, float]],
    curves: Mapping[str, Mapping[str, float]],
    slices: Mapping[str, Mapping[str, Any]],
    calibration: Mapping[str, Any],
    replay: Mapping[str, Any] | None,
    report: str,
    comparisons: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The document with every key of DOCUMENT_KEYS, in that order."""
    return {
        "schema_version": METRICS_SCHEMA_VERSION,
        "dataset_version": dataset_version,
        "split": split,
        "model_ref": model_ref,
        "model_versions": dict(model_versions),
        "n_users": n_users,
        "ks": list(ks),
        "curve_ks": curve_ks(ks),
        "n_candidates": n_candidates,
        "seconds": round(seconds, 3),
        "models": {k: dict(v) for k, v in models.items()},
        "curves": {k: dict(v) for k, v in curves.items()},
        "slices": dict(slices),
        "calibration": dict(calibration),
        "replay": dict(replay) if replay is not None else None,
        "comparisons": [dict(c) for c in comparisons],
        "report": report,
    }
