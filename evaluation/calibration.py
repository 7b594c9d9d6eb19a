"""Score quality of pointwise predictions: ROC AUC (overall and per task) and calibration.

AUC says whether positives are scored above negatives; calibration says whether a predicted 0.3 comes
true 30% of the time, which matters as soon as a score is read as a probability (blending, thresholds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from evaluation.metrics import MetricError


def _binary_labels(labels: ArrayLike) -> np.ndarray:
    y = np.asarray(labels)
    if y.size and not np.isin(y, (0, 1)).all():
        raise MetricError("labels must be 0 or 1")
    return y.astype(bool)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # start of each run of equal values, and the mean rank of the run
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Probability that a random positive is scored above a random negative (ties count one half).

    Computed from the Mann-Whitney rank sum, so it costs a sort, not a curve.

    Raises:
        MetricError: on mismatched lengths, non-finite scores, or when one class is absent.

    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y = _binary_labels(labels).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if y.shape != s.shape:
        raise MetricError(f"{y.size} labels for {s.size} scores")
    if not np.isfinite(s).all():
        raise MetricError("scores must be finite")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MetricError("AUC needs both positive and negative labels")
    rank_sum = _average_ranks(s)[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc_by_task(
    labels: ArrayLike, scores: ArrayLike, tasks: Sequence[str] | None = None
) -> dict[str, float]:
    """AUC of each label column (one per task), plus "overall" (all cells pooled) and "macro" (their mean).

    A task whose column holds a single class has no AUC: it is reported as NaN and left out of "macro",
    so one rare task does not hide the others.

    Args:
        labels: (n_examples, n_tasks) 0/1.
        scores: (n_examples, n_tasks) predictions.
        tasks: column names; "task_0", "task_1", ... when omitted.

    >>> labels, scores = [[1, 0], [0, 1], [1, 1]], [[0.9, 0.2], [0.1, 0.7], [0.6, 0.3]]
    >>> out = roc_auc_by_task(labels, scores, ["click", "like"])
    >>> out["click"], out["like"], out["macro"]
    (1.0, 1.0, 1.0)
    """
    y = _binary_labels(labels)
    s = np.asarray(scores, dtype=float)
    if y.ndim != 2 or y.shape != s.shape:
        raise MetricError(f"labels {y.shape} and scores {s.shape} must be the same 2-D shape")
    names = list(tasks) if tasks is not None else [f"task_{j}" for j in range(y.shape[1])]
    if len(names) != y.shape[1]:
        raise MetricError(f"{len(names)} task names for {y.shape[1]} label columns")
    if {"overall", "macro"} & set(names):
        raise MetricError("'overall' and 'macro' are reserved and cannot name a task")
    out: dict[str, float] = {}
    for j, name in enumerate(names):
        column = y[:, j]
        out[name] = roc_auc(column, s[:, j]) if 0 < column.sum() < len(column) else float("nan")
    per_task = [v for v in out.values() if not np.isnan(v)]
    out["macro"] = float(np.mean(per_task)) if per_task else float("nan")
    out["overall"] = roc_auc(y, s)
    return out


@dataclass(frozen=True)
class ReliabilityCurve:
    """Equal-width bins over [0, 1]: what a reliability diagram draws.

    Attributes:
        edges: (n_bins + 1,) bin edges; bin i holds [edges[i], edges[i+1]), the last bin also holds 1.
        mean_prediction: (n_bins,) mean predicted probability per bin; NaN for empty bins.
        frequency: (n_bins,) share of positive labels per bin; NaN for empty bins.
        count: (n_bins,) examples per bin.
    """

    edges: np.ndarray
    mean_prediction: np.ndarray
    frequency: np.ndarray
    count: np.ndarray


def reliability_curve(labels: ArrayLike, probabilities: ArrayLike, n_bins: int = 10) -> ReliabilityCurve:
    """Bin predictions into `n_bins` equal-width bins and compare mean prediction with observed rate.

    >>> curve = reliability_curve([0, 1, 1, 1], [0.1, 0.2, 0.9, 1.0], n_bins=2)
    >>> curve.count.tolist(), curve.mean_prediction.tolist(), curve.frequency.tolist()
    ([2, 2], [0.15000000000000002, 0.95], [0.5, 1.0])
    """
    if n_bins < 1:
        raise MetricError(f"n_bins must be at least 1, got {n_bins}")
    y = _binary_labels(labels).ravel().astype(float)
    p = np.asarray(probabilities, dtype=float).ravel()
    if y.shape != p.shape:
        raise MetricError(f"{y.size} labels for {p.size} probabilities")
    if p.size == 0:
        raise MetricError("no predictions to calibrate")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise MetricError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # inner edges only, so 1.0 falls in the last bin rather than a bin of its own
    bins = np.searchsorted(edges[1:-1], p, side="right")
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prediction = np.bincount(bins, weights=p, minlength=n_bins) / count
        frequency = np.bincount(bins, weights=y, minlength=n_bins) / count
    return ReliabilityCurve(edges=edges, mean_prediction=mean_prediction, frequency=frequency, count=count)


def expected_calibration_error(labels: ArrayLike, probabilities: ArrayLike, n_bins: int = 10) -> float:
    """Sum over equal-width bins of (bin share of examples) x |observed rate - mean prediction|.

    0 for perfectly calibrated bins; at most 1. Empty bins weigh nothing.

    >>> round(expected_calibration_error([0, 1, 1, 1], [0.1, 0.2, 0.9, 1.0], n_bins=2), 4)  # .5*.35 + .5*.05
    0.2
    """
    curve = reliability_curve(labels, probabilities, n_bins)
    filled = curve.count > 0
    weights = curve.count[filled] / curve.count.sum()
    gaps = np.abs(curve.frequency[filled] - curve.mean_prediction[filled])
    return float((weights * gaps).sum())


def plot_reliability(curve: ReliabilityCurve, path: Path, title: str = "Reliability") -> Path:
    """Draw the reliability diagram (observed rate against mean prediction) and a count histogram to PNG.

    Points on the diagonal are calibrated; above it the model under-predicts, below it over-predicts.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    filled = curve.count > 0
    centres = (curve.edges[:-1] + curve.edges[1:]) / 2
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    top.plot(curve.mean_prediction[filled], curve.frequency[filled], marker="o", label="model")
    top.set_ylabel("observed positive rate")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_title(title)
    top.legend(loc="upper left")
    bottom.bar(centres, curve.count, width=np.diff(curve.edges), edgecolor="black")
    bottom.set_xlabel("mean predicted probability")
    bottom.set_ylabel("examples")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
