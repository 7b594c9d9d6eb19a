"""Distribution shift between a reference sample and a current sample, as plain functions.

These are the numbers the alert rules (``monitoring/alerts.py``) judge: the population stability index
(PSI) per feature and on model scores, a smoothed KL divergence for categorical features, missing-value
rates, and the drift of learned embeddings. Nothing here reads files or starts a framework, so a batch
job, a notebook and the serving side can all compute the same figures.

PSI = sum over bins of ``(cur - ref) * ln(cur / ref)``, where ``ref`` and ``cur`` are the shares of each
sample in a bin. A share of zero would make the logarithm infinite, so every share is raised to at least
``EPSILON`` (1e-4) before the sum; the shares are not renormalised afterwards, which keeps the value of
every non-empty bin exactly as counted. Common reading: < 0.1 stable, 0.1-0.2 moderate, > 0.2 shifted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

EPSILON = 1e-4
"""Floor for a bin share in PSI: an empty bin counts as holding 0.01% of its sample."""

UNSEEN = "__unseen__"
"""The bucket for categories of the current sample that the reference never showed."""

SHIFT_COLUMNS: tuple[str, ...] = (
    "feature",
    "kind",
    "psi",
    "kl",
    "missing_ref",
    "missing_cur",
    "n_ref",
    "n_cur",
)


class ShiftError(ValueError):
    """The samples cannot be compared (wrong shapes, unknown columns, too few bins)."""


def psi_from_shares(reference: np.ndarray, current: np.ndarray, epsilon: float = EPSILON) -> float:
    """PSI between two aligned share vectors (each sums to 1), with empty bins floored at ``epsilon``.

    >>> round(psi_from_shares(np.array([0.5, 0.5]), np.array([0.75, 0.25])), 6)
    0.274653
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.shape != cur.shape or ref.ndim != 1:
        raise ShiftError(f"share vectors must be aligned 1-d arrays, got shapes {ref.shape} and {cur.shape}")
    ref = np.maximum(ref, epsilon)
    cur = np.maximum(cur, epsilon)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def quantile_edges(reference: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Inner cut points at the reference's quantiles ``1/n_bins .. (n_bins-1)/n_bins``, deduplicated.

    Bins are right-closed: ``(-inf, e0], (e0, e1], ..., (e_last, inf)``, so values beyond the reference's
    range still land in the outer bins. Repeated quantiles (a feature with a few distinct values) merge
    into one edge, so a constant reference still gives two bins: at or below the constant, and above it.

    >>> quantile_edges(np.array([1.0, 2.0, 3.0, 4.0]), n_bins=2)
    array([2.5])
    """
    if n_bins < 2:
        raise ShiftError(f"n_bins must be at least 2, got {n_bins}")
    values = np.asarray(reference, dtype=np.float64)
    return np.unique(np.quantile(values, np.arange(1, n_bins) / n_bins))


def _bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # side="left" counts the edges strictly below each value, which makes the bins right-closed.
    index = np.searchsorted(edges, values, side="left")
    return np.bincount(index, minlength=len(edges) + 1) / len(values)


def _finite(values: pd.Series | np.ndarray | Sequence[float]) -> np.ndarray:
    numbers = pd.to_numeric(pd.Series(values), errors="coerce")
    array: np.ndarray = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    finite: np.ndarray = array[np.isfinite(array)]
    return finite


def numeric_psi(
    reference: pd.Series | np.ndarray | Sequence[float],
    current: pd.Series | np.ndarray | Sequence[float],
    n_bins: int = 10,
    epsilon: float = EPSILON,
) -> float:
    """PSI of a numeric feature on bins cut at the reference's quantiles; missing values are left out.

    Missing values have their own signal (:func:`missing_rate`); NaN when either side has no value.

    >>> round(numeric_psi([1, 2, 3, 4], [1, 1, 1, 4], n_bins=2), 6)
    0.274653
    """
    ref, cur = _finite(reference), _finite(current)
    if len(ref) == 0 or len(cur) == 0:
        return float("nan")
    edges = quantile_edges(ref, n_bins)
    return psi_from_shares(_bin_shares(ref, edges), _bin_shares(cur, edges), epsilon)


def score_psi(
    reference_scores: pd.Series | np.ndarray | Sequence[float],
    current_scores: pd.Series | np.ndarray | Sequence[float],
    n_bins: int = 10,
) -> float:
    """PSI of model scores: the model's output moving is often the first visible sign of input drift."""
    return numeric_psi(reference_scores, current_scores, n_bins=n_bins)


def category_counts(
    reference: pd.Series | Sequence[object], current: pd.Series | Sequence[object]
) -> tuple[pd.Series, pd.Series]:
    """Counts per reference category for both samples, aligned, plus an ``UNSEEN`` bucket.

    Categories the reference never showed are pooled into ``UNSEEN`` so that a flood of new values (a new
    surface, a renamed device type) shows up as one large bin instead of many tiny ones. Missing values
    are left out.
    """
    ref = pd.Series(reference).dropna().astype(str)
    cur = pd.Series(current).dropna().astype(str)
    categories = sorted(ref.unique())
    ref_counts = ref.value_counts().reindex(categories, fill_value=0)
    cur_known = cur[cur.isin(categories)]
    cur_counts = cur_known.value_counts().reindex(categories, fill_value=0)
    ref_counts.loc[UNSEEN] = 0
    cur_counts.loc[UNSEEN] = len(cur) - len(cur_known)
    return ref_counts.astype(np.int64), cur_counts.astype(np.int64)


def categorical_psi(
    reference: pd.Series | Sequence[object],
    current: pd.Series | Sequence[object],
    epsilon: float = EPSILON,
) -> float:
    """PSI over category shares (unseen categories in one bucket); NaN when either side has no value.

    >>> round(categorical_psi(["a", "a", "b", "b"], ["a", "a", "a", "b"]), 6)
    0.274653
    """
    ref_counts, cur_counts = category_counts(reference, current)
    if ref_counts.sum() == 0 or cur_counts.sum() == 0:
        return float("nan")
    ref_shares = ref_counts.to_numpy() / ref_counts.sum()
    cur_shares = cur_counts.to_numpy() / cur_counts.sum()
    return psi_from_shares(ref_shares, cur_shares, epsilon)


def kl_divergence(
    reference: pd.Series | Sequence[object],
    current: pd.Series | Sequence[object],
    alpha: float = 0.5,
) -> float:
    """KL(current || reference) in nats over category shares, with ``alpha`` added to every count.

    Additive smoothing keeps the divergence finite when the current sample holds a category the reference
    never showed (the ``UNSEEN`` bucket) and is less arbitrary than a fixed floor for small samples. The
    direction measures how surprising the current traffic is under the reference distribution.
    """
    if alpha <= 0:
        raise ShiftError(f"alpha must be positive, got {alpha}")
    ref_counts, cur_counts = category_counts(reference, current)
    if ref_counts.sum() == 0 or cur_counts.sum() == 0:
        return float("nan")
    ref = ref_counts.to_numpy(dtype=np.float64) + alpha
    cur = cur_counts.to_numpy(dtype=np.float64) + alpha
    ref, cur = ref / ref.sum(), cur / cur.sum()
    return float(np.sum(cur * np.log(cur / ref)))


def missing_rate(values: pd.Series | Sequence[object]) -> float:
    """Share of missing values (None, NaN, NaT); NaN for an empty sample.

    >>> missing_rate([1.0, None, float("nan"), 4.0])
    0.5
    """
    series = pd.Series(values)
    return float(series.isna().mean()) if len(series) else float("nan")


@dataclass(frozen=True)
class MissingShift:
    """Missing-value rates of one feature in both samples; ``change`` is current minus reference."""

    reference: float
    current: float

    @property
    def change(self) -> float:
        return self.current - self.reference


def missing_shift(
    reference: pd.Series | Sequence[object], current: pd.Series | Sequence[object]
) -> MissingShift:
    """Missing rate before and after: a feature that stops being filled is a broken pipeline, not drift."""
    return MissingShift(missing_rate(reference), missing_rate(current))


def is_categorical(values: pd.Series) -> bool:
    """Strings, booleans and pandas categories are compared by category share; numbers by quantile bins."""
    return bool(
        isinstance(values.dtype, pd.CategoricalDtype)
        or pd.api.types.is_bool_dtype(values)
        or pd.api.types.is_object_dtype(values)
        or pd.api.types.is_string_dtype(values)
    )


def feature_shift_table(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str] | None = None,
    n_bins: int = 10,
) -> pd.DataFrame:
    """One row per feature: ``feature, kind, psi, kl, missing_ref, missing_cur, n_ref, n_cur``.

    ``kind`` is ``categorical`` or ``numeric`` (from the reference's dtype); ``kl`` is filled for
    categorical features only (NaN for numeric ones, whose PSI already covers them). ``columns`` defaults
    to the columns both frames share, in the reference's order.
    """
    if columns is None:
        columns = [c for c in reference.columns if c in current.columns]
    absent = [c for c in columns if c not in reference.columns or c not in current.columns]
    if absent:
        raise ShiftError(f"columns missing from the reference or current frame: {absent}")
    rows = []
    for name in columns:
        ref, cur = reference[name], current[name]
        categorical = is_categorical(ref)
        rows.append(
            {
                "feature": name,
                "kind": "categorical" if categorical else "numeric",
                "psi": categorical_psi(ref, cur) if categorical else numeric_psi(ref, cur, n_bins),
                "kl": kl_divergence(ref, cur) if categorical else float("nan"),
                "missing_ref": missing_rate(ref),
                "missing_cur": missing_rate(cur),
                "n_ref": len(ref),
                "n_cur": len(cur),
            }
        )
    return pd.DataFrame(rows, columns=list(SHIFT_COLUMNS))


@dataclass(frozen=True)
class EmbeddingDrift:
    """How far embeddings moved between two model versions or two points in time.

    ``centroid_distance`` is the cosine distance between the mean reference and mean current embedding
    (the whole space shifting); ``mean_entity_distance`` is the mean cosine distance of each entity's own
    two embeddings, over the ``n_common`` entities present in both (individual items or users moving).
    The latter is NaN when no entity is shared. Comparing across retrainings is only meaningful when the
    spaces are aligned (a warm-started model, or the same model on new inputs).
    """

    centroid_distance: float
    mean_entity_distance: float
    n_common: int


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    if np.any(norms == 0):
        raise ShiftError("cosine distance is undefined for a zero vector")
    return np.asarray(1.0 - np.sum(a * b, axis=-1) / norms)


def embedding_drift(
    reference_ids: Sequence[str],
    reference: np.ndarray,
    current_ids: Sequence[str],
    current: np.ndarray,
) -> EmbeddingDrift:
    """Centroid and per-entity cosine drift between two embedding tables ``(n, dim)`` keyed by id.

    >>> drift = embedding_drift(["a"], np.array([[1.0, 0.0]]), ["a"], np.array([[0.0, 1.0]]))
    >>> drift.centroid_distance, drift.mean_entity_distance, drift.n_common
    (1.0, 1.0, 1)
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.ndim != 2 or cur.ndim != 2 or ref.shape[1] != cur.shape[1]:
        raise ShiftError(f"embeddings must be (n, dim) with the same dim, got {ref.shape} and {cur.shape}")
    ref_ids, cur_ids = list(reference_ids), list(current_ids)
    if len(ref_ids) != len(ref) or len(cur_ids) != len(cur):
        raise ShiftError(f"{len(ref_ids)} reference ids for {len(ref)} rows, {len(cur_ids)} for {len(cur)}")
    if len(ref) == 0 or len(cur) == 0:
        raise ShiftError("an embedding table is empty")
    centroid = float(_cosine_distance(ref.mean(axis=0), cur.mean(axis=0)))
    position = {entity: row for row, entity in enumerate(cur_ids)}
    pairs = [(row, position[entity]) for row, entity in enumerate(ref_ids) if entity in position]
    if not pairs:
        return EmbeddingDrift(centroid, float("nan"), 0)
    ref_rows, cur_rows = (np.array(side) for side in zip(*pairs, strict=True))
    per_entity = _cosine_distance(ref[ref_rows], cur[cur_rows])
    return EmbeddingDrift(centroid, float(per_entity.mean()), len(pairs))
