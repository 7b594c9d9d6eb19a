"""The LightGBM lambdarank ranker over retrieval candidates, one query group per user, and its calibration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.config import RankerConfig
from training.calibration import PlattCalibrator, fit_platt, logistic
from training.ranker_features import ranker_feature_names

HOLDOUT_FRACTION = 0.2
EARLY_STOPPING_ROUNDS = 30


class RankerDataError(ValueError):
    """Ranker rows, labels and groups that do not line up."""


@dataclass(frozen=True)
class RankerResult:
    booster: Any  # lightgbm.Booster
    metrics: dict[str, float]
    calibrator: PlattCalibrator


def _group_offsets(group_sizes: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(group_sizes)])


def train_ranker(
    features: np.ndarray, labels: np.ndarray, group_sizes: np.ndarray, cfg: RankerConfig
) -> RankerResult:
    """Fit lambdarank on candidate rows grouped by user (rows of a group are contiguous).

    Groups without a positive carry no ranking signal and are dropped. A seeded fifth of the remaining
    users is held out to pick the number of trees (early stopping on NDCG@10), so the ranker never
    needs the test window. With fewer than two users holding a positive (tiny samples) every group is
    fitted, without a holdout.

    The calibrator (raw score -> P(engaged)) is fitted on rows the trees were not fitted on: every
    candidate of the held-out users, plus the same seeded share of the users without a positive (the
    trees skip those, but they are part of the population scored at evaluation). No negative is
    sampled away, so the down-sampling correction is the identity (negative_rate 1). Without a holdout
    it is fitted in-sample (`ranker_calibration_in_sample` = 1). ECE of the raw score read as log-odds
    and of the calibrated probability, on those rows, goes into the metrics.

    Args:
        features: (n_rows, len(ranker_feature_names(cfg.feature_service))) float32.
        labels: (n_rows,) 1 for a positive candidate, else 0.
        group_sizes: rows per user, summing to n_rows.
        cfg: LightGBM settings and the feature service the rows were built for.
    """
    import lightgbm as lgb

    names = ranker_feature_names(cfg.feature_service)
    sizes = np.asarray(group_sizes, dtype=np.int64)
    if features.shape != (len(labels), len(names)) or sizes.sum() != len(labels):
        raise RankerDataError(
            f"ranker data mismatch: features {features.shape}, labels {len(labels)}, groups sum {sizes.sum()}"
        )
    offsets = _group_offsets(sizes)
    has_positive = np.array(
        [labels[offsets[g] : offsets[g + 1]].max() > 0 if sizes[g] else False for g in range(len(sizes))]
    )
    useful = np.flatnonzero(has_positive)
    rng = np.random.default_rng(cfg.seed)
    if len(useful) < 2:
        # Too little signal to learn or to hold out (a tiny sample): fit all groups without early
        # stopping; with no positives the trees stay flat and ranking keeps the retrieval order.
        fit, holdout = np.arange(len(sizes)), np.zeros(0, dtype=np.int64)
        calibration_groups = fit
    else:
        shuffled = rng.permutation(useful)
        n_holdout = max(1, round(len(useful) * HOLDOUT_FRACTION))
        holdout, fit = np.sort(shuffled[:n_holdout]), np.sort(shuffled[n_holdout:])
        empty = rng.permutation(np.flatnonzero(~has_positive))
        held_empty = empty[: round(len(empty) * HOLDOUT_FRACTION)]
        calibration_groups = np.sort(np.concatenate([holdout, held_empty]))
    if len(fit) == 0:
        raise RankerDataError("ranker needs at least one user with candidates")

    def rows_of(groups: np.ndarray) -> np.ndarray:
        if len(groups) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(offsets[g], offsets[g + 1]) for g in groups])

    params = {
        "objective": "lambdarank",
        "metric": "ndcg",
        "eval_at": [10],
        "num_leaves": cfg.num_leaves,
        "learning_rate": cfg.learning_rate,
        "min_child_samples": cfg.min_child_samples,
        "num_threads": cfg.num_threads,
        "seed": cfg.seed,
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
    }
    fit_rows, holdout_rows = rows_of(fit), rows_of(holdout)
    fit_set = lgb.Dataset(features[fit_rows], labels[fit_rows], group=sizes[fit], feature_name=list(names))
    valid: dict[str, Any] = {}
    if len(holdout):
        holdout_set = lgb.Dataset(
            features[holdout_rows], labels[holdout_rows], group=sizes[holdout], reference=fit_set
        )
        valid = {
            "valid_sets": [holdout_set],
            "valid_names": ["holdout"],
            "callbacks": [lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
        }
    booster = lgb.train(params, fit_set, num_boost_round=cfg.n_estimators, **valid)
    best = booster.best_score.get("holdout", {}).get("ndcg@10", float("nan"))
    calibrator, calibration_metrics = _calibrate(
        booster, features[rows_of(calibration_groups)], labels[rows_of(calibration_groups)]
    )
    metrics = {
        "ranker_holdout_ndcg_at_10": float(best),
        "ranker_best_iteration": float(booster.best_iteration or cfg.n_estimators),
        "ranker_fit_users": float(len(fit)),
        "ranker_holdout_users": float(len(holdout)),
        "ranker_rows": float(len(fit_rows) + len(holdout_rows)),
        "ranker_positive_rate": float(labels[np.concatenate([fit_rows, holdout_rows])].mean()),
        "ranker_calibration_in_sample": float(len(holdout) == 0),
        **calibration_metrics,
    }
    return RankerResult(booster=booster, metrics=metrics, calibrator=calibrator)


def _calibrate(
    booster: Any, features: np.ndarray, labels: np.ndarray
) -> tuple[PlattCalibrator, dict[str, float]]:
    """Platt calibrator of the booster's scores on these rows, and ECE before and after it."""
    from evaluation.calibration import expected_calibration_error

    scores = booster.predict(features, num_iteration=booster.best_iteration or None)
    calibrator = fit_platt(scores, labels, negative_rate=1.0)
    binary = (np.asarray(labels) > 0).astype(np.int64)
    metrics = {
        "ranker_calibration_rows": float(len(labels)),
        "ranker_calibration_slope": calibrator.slope,
        "ranker_ece_raw": expected_calibration_error(binary, logistic(scores)),
        "ranker_ece_calibrated": expected_calibration_error(binary, calibrator.probabilities(scores)),
    }
    return calibrator, metrics
