"""Observations of one monitoring window, built from frames: what the alert rules judge.

Every function takes the reference and current samples (already cut to their windows) and returns
:class:`monitoring.alerts.Observation` values; nothing here reads files or loads a model, so each signal
is tested on hand-made frames. :mod:`monitoring.monitor` does the reading.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

import numpy as np
import pandas as pd

from monitoring.alerts import Observation, shift_observations
from monitoring.business import business_metrics
from monitoring.drift import popularity_bucket
from monitoring.shift import categorical_psi, embedding_drift, feature_shift_table, numeric_psi, score_psi
from monitoring.upstream import reference_vocabulary, vocabulary_change
from recsys.vocab import DEVICE_TYPES, EVENT_TYPES, SURFACES

EVENT_SIGNAL_COLUMNS: tuple[str, ...] = (
    "event_type",
    "device_type",
    "surface",
    "hour_of_day",
    "item_popularity_bucket",
    "user_activity",
    "dwell_time_ms",
    "position",
)
# The vocabularies the contracts and the models know; a value outside them and the reference is new.
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "event_type": EVENT_TYPES,
    "device_type": DEVICE_TYPES,
    "surface": SURFACES,
}


def event_signals(
    window_events: pd.DataFrame, item_rank: pd.Series, new_items: Collection[str] = ()
) -> pd.DataFrame:
    """Per-event columns compared: the drift report's, plus device, surface, dwell and position.

    ``item_rank`` ranks items by their reference-window popularity; ``new_items`` (published inside this
    window) get the bucket ``new`` instead, in either window. Without it, a catalogue that grows at a
    steady pace would always look drifted: the current window's arrivals have no reference rank.
    """
    ts = window_events["event_ts"]
    activity = window_events.groupby("user_id")["event_id"].transform("size")
    bucket = popularity_bucket(window_events["item_id"].map(item_rank))
    bucket[window_events["item_id"].astype(str).isin(set(new_items)).to_numpy()] = "new"
    return pd.DataFrame(
        {
            "event_type": window_events["event_type"].astype(object).to_numpy(),
            "device_type": window_events["device_type"].astype(object).to_numpy(),
            "surface": window_events["surface"].astype(object).to_numpy(),
            "hour_of_day": ts.dt.hour.astype(str).str.zfill(2).to_numpy(),
            "item_popularity_bucket": bucket.to_numpy(),
            # log1p: a few heavy users would otherwise dominate the distance between the windows.
            "user_activity": np.log1p(activity.astype("float64")).to_numpy(),
            "dwell_time_ms": pd.to_numeric(window_events["dwell_time_ms"]).astype("float64").to_numpy(),
            "position": pd.to_numeric(window_events["position"]).astype("float64").to_numpy(),
        }
    )


def psi_of(reference: pd.Series, current: pd.Series, categorical: bool, n_bins: int) -> float:
    return categorical_psi(reference, current) if categorical else numeric_psi(reference, current, n_bins)


def onset(
    reference: pd.Series,
    current: pd.Series,
    current_ts: pd.Series,
    threshold: float,
    bucket: pd.Timedelta,
    categorical: bool,
    n_bins: int = 10,
) -> datetime | None:
    """When a shift began: the earliest bucket from which on every bucket's PSI exceeds ``threshold``.

    Buckets of the current window (``bucket`` long) are compared with the whole reference window, so the
    answer is "shifted since Tuesday 00:00", not merely "shifted somewhere in this week". None when the
    last bucket itself is not above the threshold (the shift is intermittent, not ongoing).
    """
    ts = pd.to_datetime(current_ts.reset_index(drop=True), utc=True)
    values = current.reset_index(drop=True)
    starts = ts.dt.floor(bucket)
    began: datetime | None = None
    for start in sorted(starts.unique()):
        value = psi_of(reference, values[starts == start], categorical, n_bins)
        if np.isnan(value) or value <= threshold:
            began = None
        elif began is None:
            began = pd.Timestamp(start).to_pydatetime()
    return began


def data_observations(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    current_ts: pd.Series,
    since: datetime,
    psi_threshold: float = 0.2,
    n_bins: int = 10,
    bucket: pd.Timedelta = pd.Timedelta(days=1),
) -> list[Observation]:
    """``feature_psi``, ``feature_kl`` and ``fill_rate`` per column; ``since`` of a shift is its onset."""
    table = feature_shift_table(reference, current, n_bins=n_bins)
    observations: list[Observation] = []
    for obs in shift_observations(table, since=since):
        if obs.metric == "feature_psi" and obs.value > psi_threshold and obs.subject is not None:
            categorical = str(table.loc[table["feature"] == obs.subject, "kind"].iloc[0]) == "categorical"
            began = onset(
                reference[obs.subject], current[obs.subject], current_ts, psi_threshold, bucket, categorical
            )
            obs = Observation(obs.metric, obs.value, obs.subject, obs.baseline, obs.window, began or since)
        observations.append(obs)
    for row in table.itertuples(index=False):
        if row.kind == "categorical" and not np.isnan(row.kl):
            observations.append(
                Observation("feature_kl", float(row.kl), subject=str(row.feature), since=since)
            )
    return observations


def is_list_column(values: pd.Series) -> bool:
    first = values.dropna()
    return bool(len(first)) and isinstance(first.iloc[0], list | tuple | np.ndarray)


def snapshot_observations(
    reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str], since: datetime, n_bins: int = 10
) -> list[Observation]:
    """``feature_psi`` and ``fill_rate`` of stored feature snapshots (vector columns: fill rate only)."""
    observations: list[Observation] = []
    for name in columns:
        ref, cur = reference[name], current[name]
        fill_ref, fill_cur = float(ref.notna().mean()), float(cur.notna().mean())
        observations.append(Observation("fill_rate", fill_cur, subject=name, baseline=fill_ref, since=since))
        if not is_list_column(ref) and not is_list_column(cur):
            value = (
                numeric_psi(ref, cur, n_bins)
                if pd.api.types.is_numeric_dtype(ref)
                else categorical_psi(ref, cur)
            )
            observations.append(Observation("feature_psi", value, subject=name, since=since))
    return observations


def vocabulary_observations(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    items: pd.DataFrame,
    known_categories: Collection[str],
    since: datetime,
) -> list[Observation]:
    """``unseen_category_share`` of event columns and of item categories.

    An event column's value is known when the fixed vocabulary or the reference holds it: a valid device
    that becomes common is drift (PSI judges it), a value nobody defined is a broken producer. Item
    categories are judged against the fixed genre vocabulary the models' genre vectors are built
    from: an unknown genre is not drift, it is a value the features will silently drop.
    """
    observations = []
    for name, vocabulary in VOCABULARIES.items():
        known = reference_vocabulary(reference[name].tolist()) | set(vocabulary)
        change = vocabulary_change(name, current[name].tolist(), known)
        observations.append(
            Observation("unseen_category_share", change.unseen_share, subject=name, since=since)
        )
    change = vocabulary_change("item_categories", items["categories"].tolist(), known_categories)
    observations.append(
        Observation("unseen_category_share", change.unseen_share, subject="item_categories", since=since)
    )
    return observations


def contract_observation(quarantine: pd.DataFrame, since: datetime) -> Observation:
    """Rows of the dataset version quarantined by the data contracts."""
    return Observation("contract_violations", float(len(quarantine)), subject="ingest", since=since)


def business_observations(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    window: str,
    since: datetime,
    catalogue: Sequence[str],
    categories: Mapping[str, Collection[str]],
) -> list[Observation]:
    """Business metrics of the current window with the reference window's value as baseline."""
    counts = reference.groupby("item_id").size()
    interactions = {str(k): float(v) for k, v in counts.items()}
    before = business_metrics(reference, catalogue, categories, interactions)
    after = business_metrics(current, catalogue, categories, interactions)
    return [
        Observation(metric, value, subject="all", baseline=before.get(metric), window=window, since=since)
        for metric, value in after.items()
        if metric in before
    ]


def model_observations(
    reference_ids: Sequence[str],
    reference_embeddings: np.ndarray,
    current_ids: Sequence[str],
    current_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    since: datetime,
    top_k: int = 10,
) -> list[Observation]:
    """``score_psi`` of the champion's top-k scores and user ``embedding_*`` drift between the windows."""

    def top_scores(users: np.ndarray) -> np.ndarray:
        scores = users @ item_embeddings.T  # (n_users, n_items)
        k = min(top_k, scores.shape[1])
        return np.sort(np.partition(scores, -k, axis=1)[:, -k:], axis=1).ravel()

    drift = embedding_drift(reference_ids, reference_embeddings, current_ids, current_embeddings)
    observations = [
        Observation(
            "score_psi",
            score_psi(top_scores(reference_embeddings), top_scores(current_embeddings)),
            subject="retrieval",
            since=since,
        ),
        Observation("embedding_centroid_distance", drift.centroid_distance, subject="user", since=since),
    ]
    if drift.n_common:
        observations.append(
            Observation("embedding_entity_distance", drift.mean_entity_distance, subject="user", since=since)
        )
    return observations
