"""The LightGBM ranker over retrieval candidates, one query group per user, and its calibration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.config import RankerConfig
from training.calibration import PlattCalibrator, fit_platt, logistic
from training.ranker_features import ranker_columns

HOLDOUT_FRACTION = 0.2
EARLY_STOPPING_ROUNDS = 50


class RankerDataError(ValueError):
    """Ranker rows, labels and groups that do not line up."""


@dataclass(frozen=True)
class RankerResult:
    booster: Any  # lightgbm.Booster
    metrics: dict[str, float]
    calibrator: PlattCalibrator


@dataclass(frozen=True)
class _Fold:
    fit: np.ndarray  # groups the trees are fitted on
    holdout: np.ndarray  # groups with a positive that pick the tree count
    scored: np.ndarray  # groups scored out of fold for calibration: holdout plus users without a positive


def _group_offsets(group_sizes: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(group_sizes)])


def _folds(has_positive: np.ndarray, n_folds: int, rng: np.random.Generator) -> list[_Fold]:
    """Seeded user folds. One fold: a HOLDOUT_FRACTION share of the users with a positive held out, and
    the same share of those without. Several: every user lands in exactly one fold's held-out part."""
    useful = rng.permutation(np.flatnonzero(has_positive))
    empty = rng.permutation(np.flatnonzero(~has_positive))
    if n_folds == 1:
        n_holdout = max(1, round(len(useful) * HOLDOUT_FRACTION))
        holdout = np.sort(useful[:n_holdout])
        scored = np.sort(np.concatenate([holdout, empty[: round(len(empty) * HOLDOUT_FRACTION)]]))
        return [_Fold(np.sort(useful[n_holdout:]), holdout, scored)]
    parts, empty_parts = np.array_split(useful, n_folds), np.array_split(empty, n_folds)
    return [
        _Fold(
            np.sort(np.concatenate([parts[j] for j in range(n_folds) if j != f])),
            np.sort(parts[f]),
            np.sort(np.concatenate([parts[f], empty_parts[f]])),
        )
        for f in range(n_folds)
    ]


def train_ranker(
    features: np.ndarray,
    labels: np.ndarray,
    group_sizes: np.ndarray,
    cfg: RankerConfig,
    item_knn: bool = False,
) -> RankerResult:
    """Fit LightGBM (`cfg.objective`) on candidate rows grouped by user (rows of a group are contiguous).

    Groups without a positive carry no ranking signal and are not fitted. The test window is never
    needed: users of the training window pick the tree count themselves (early stopping on NDCG@10).
    With `cfg.folds` = 1 a seeded fifth of the users with a positive is held out for it, and the
    stopped model is the ranker. With k folds, each fold's trees are fitted on the other folds' users
    and stopped on its own; the ranker is then refitted on every user with the folds' mean tree count,
    so no user's labels are left out of the served model and the count is not one small holdout's
    accident. With fewer than two users holding a positive (tiny samples) every group is fitted,
    without early stopping.

    The calibrator (raw score -> P(engaged)) is fitted on scores of rows the scoring trees were not
    fitted on: the held-out users, plus the same share of the users without a positive (the trees skip
    those, but they are part of the population scored at evaluation), each scored by its fold's model.
    No negative is sampled away, so the down-sampling correction is the identity (negative_rate 1).
    Without a holdout it is fitted in-sample (`ranker_calibration_in_sample` = 1). ECE of the raw score
    read as log-odds and of the calibrated probability, on those rows, goes into the metrics.

    Args:
        features: (n_rows, len(ranker_columns(cfg.feature_service, item_knn))) float32.
        labels: (n_rows,) 1 for a positive candidate, else 0.
        group_sizes: rows per user, summing to n_rows.
        cfg: LightGBM settings and the feature service the rows were built for.
        item_knn: whether the rows carry the item-kNN signal's columns (``ranker_inputs`` with one).
    """
    import lightgbm as lgb

    names = ranker_columns(cfg.feature_service, item_knn)
    sizes = np.asarray(group_sizes, dtype=np.int64)
    if features.shape != (len(labels), len(names)) or sizes.sum() != len(labels):
        raise RankerDataError(
            f"ranker data mismatch: features {features.shape}, labels {len(labels)}, groups sum {sizes.sum()}"
        )
    offsets = _group_offsets(sizes)
    has_positive = np.array(
        [labels[offsets[g] : offsets[g + 1]].max() > 0 if sizes[g] else False for g in range(len(sizes))]
    )
    if not len(sizes):
        raise RankerDataError("ranker needs at least one user with candidates")

    def rows_of(groups: np.ndarray) -> np.ndarray:
        if len(groups) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(offsets[g], offsets[g + 1]) for g in groups])

    def dataset(groups: np.ndarray, reference: Any = None) -> Any:
        rows = rows_of(groups)
        return lgb.Dataset(
            features[rows], labels[rows], group=sizes[groups], feature_name=list(names), reference=reference
        )

    params = _params(cfg)
    if has_positive.sum() < 2:
        # Too little signal to learn or to hold out (a tiny sample): fit all groups without early
        # stopping; with no positives the trees stay flat and ranking keeps the retrieval order.
        every = np.arange(len(sizes))
        booster = lgb.train(params, dataset(every), num_boost_round=cfg.n_estimators)
        calibrator, calibration_metrics = _calibrate(
            np.asarray(booster.predict(features)), labels, in_sample=True
        )
        metrics = {
            "ranker_holdout_ndcg_at_10": float("nan"),
            "ranker_best_iteration": float(cfg.n_estimators),
            "ranker_fit_users": float(len(every)),
            "ranker_holdout_users": 0.0,
            "ranker_folds": 0.0,
            "ranker_rows": float(len(labels)),
            "ranker_positive_rate": float(labels.mean()),
            **calibration_metrics,
        }
        return RankerResult(booster=booster, metrics=metrics, calibrator=calibrator)

    rng = np.random.default_rng(cfg.seed)
    folds = _folds(has_positive, min(cfg.folds, int(has_positive.sum())), rng)
    bests, iterations, scored_rows, scored = [], [], [], []
    for fold in folds:
        fit_set = dataset(fold.fit)
        booster = lgb.train(
            params,
            fit_set,
            num_boost_round=cfg.n_estimators,
            valid_sets=[dataset(fold.holdout, reference=fit_set)],
            valid_names=["holdout"],
            callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
        )
        bests.append(booster.best_score["holdout"]["ndcg@10"])
        iterations.append(booster.best_iteration or cfg.n_estimators)
        rows = rows_of(fold.scored)
        scored_rows.append(rows)
        scored.append(
            np.asarray(booster.predict(features[rows], num_iteration=booster.best_iteration or None))
        )
    useful = np.flatnonzero(has_positive)
    if len(folds) > 1:
        rounds = max(1, round(float(np.mean(iterations))))
        booster = lgb.train(params, dataset(useful), num_boost_round=rounds)
    else:
        rounds = iterations[0]
    calibration_rows = np.concatenate(scored_rows)
    calibrator, calibration_metrics = _calibrate(
        np.concatenate(scored), labels[calibration_rows], in_sample=False
    )
    fitted = useful if len(folds) > 1 else folds[0].fit
    held = np.concatenate([fold.holdout for fold in folds])
    used_rows = rows_of(np.union1d(fitted, held))
    metrics = {
        "ranker_holdout_ndcg_at_10": float(np.mean(bests)),
        "ranker_best_iteration": float(rounds),
        "ranker_fit_users": float(len(fitted)),
        "ranker_holdout_users": float(len(held)),
        "ranker_folds": float(len(folds)),
        "ranker_rows": float(len(used_rows)),
        "ranker_positive_rate": float(labels[used_rows].mean()),
        **calibration_metrics,
    }
    return RankerResult(booster=booster, metrics=metrics, calibrator=calibrator)


def _params(cfg: RankerConfig) -> dict[str, Any]:
    """LightGBM parameters; early stopping always reads NDCG@10, whatever the objective."""
    return {
        "objective": cfg.objective,
        "metric": "ndcg",
        "eval_at": [10],
        "num_leaves": cfg.num_leaves,
        "learning_rate": cfg.learning_rate,
        "min_child_samples": cfg.min_child_samples,
        "feature_fraction": cfg.feature_fraction,
        "bagging_fraction": cfg.bagging_fraction,
        "bagging_freq": 1 if cfg.bagging_fraction < 1 else 0,
        "lambda_l2": cfg.lambda_l2,
        "num_threads": cfg.num_threads,
        "seed": cfg.seed,
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
    }


def _calibrate(
    scores: np.ndarray, labels: np.ndarray, in_sample: bool
) -> tuple[PlattCalibrator, dict[str, float]]:
    """Platt calibrator of these raw scores, and ECE before and after it."""
    from evaluation.calibration import expected_calibration_error

    calibrator = fit_platt(scores, labels, negative_rate=1.0)
    binary = (np.asarray(labels) > 0).astype(np.int64)
    metrics = {
        "ranker_calibration_rows": float(len(labels)),
        "ranker_calibration_in_sample": float(in_sample),
        "ranker_calibration_slope": calibrator.slope,
        "ranker_ece_raw": expected_calibration_error(binary, logistic(scores)),
        "ranker_ece_calibrated": expected_calibration_error(binary, calibrator.probabilities(scores)),
    }
    return calibrator, metrics
