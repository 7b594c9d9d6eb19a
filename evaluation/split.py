"""Temporal splits of the event log into train, validation and test: per user, or one global cut.

Per user (``split.method: per_user``): each user's events are ordered by (event_ts, event_id); the newest
``test_fraction`` go to test, the ``validation_fraction`` before them to validation, the rest to train.
Users with fewer than ``min_user_events`` events stay wholly in train, and every user keeps at least one
training event.

Global (``split.method: global``): train < T <= validation < T + d <= test, with T the ``cutoff`` and d
``validation_days``; the default T leaves the last ``test_days`` to test.

Either way every held-out event of a user comes after all of that user's training events, as it would in
production. The per-user split lives in ``splits/<version>/``, the global one in ``splits/<version>/global/``,
each with the settings it was cut with (``split.json``): a split asked for with other settings is refused,
not silently replaced by the one on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recsys.config import PipelineConfig, SplitConfig
from recsys.ingest.schema import EVENTS_SCHEMA, to_arrow, to_pandas
from recsys.state import MissingStateError, StateDir

PARTS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_METHODS: tuple[str, ...] = ("per_user", "global")
SETTINGS_FILE = "split.json"
# The settings that decide each method's cut; the other method's settings do not change it.
CUT_SETTINGS: dict[str, tuple[str, ...]] = {
    "per_user": ("validation_fraction", "test_fraction", "min_user_events"),
    "global": ("cutoff", "validation_days", "test_days"),
}


class SplitError(ValueError):
    """A split that cannot be cut as configured (for example a cutoff with no event before it)."""


def method_folder(base: Path, method: str) -> Path:
    """``base`` for a per-user split, ``base/<method>`` for another method: how split and evaluation
    folders keep each method's files apart.

    Raises:
        SplitError: an unknown method.
    """
    if method not in SPLIT_METHODS:
        raise SplitError(f"unknown split {method!r}; known: {', '.join(SPLIT_METHODS)}")
    return base if method == "per_user" else base / method


def split_dir(state: StateDir, version: str, method: str = "per_user") -> Path:
    """Where a split of ``version`` lives: ``splits/<version>/`` (per user) or ``.../global/``."""
    return method_folder(state.splits(version), method)


@dataclass(frozen=True)
class Split:
    """Three disjoint event frames (columns of ``interaction_events``), each sorted by user and time."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame


@dataclass(frozen=True)
class SplitSummary:
    """Row counts of a split; ``created`` is False when it already existed."""

    dataset_version: str
    created: bool
    n_train: int
    n_validation: int
    n_test: int
    path: Path


def holdout_counts(n_events: np.ndarray, cfg: SplitConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per user, how many of the newest events go to test and to validation.

    Both counts round up, then shrink (validation first) so that at least one training event remains.

    >>> test, val = holdout_counts(np.array([2, 5, 10, 3]), SplitConfig(test_fraction=0.2,
    ...     validation_fraction=0.1, min_user_events=3))
    >>> test.tolist(), val.tolist()
    ([0, 1, 2, 1], [0, 1, 1, 1])
    """
    n = np.asarray(n_events, dtype=np.int64)
    eligible = n >= cfg.min_user_events
    n_test = np.where(eligible, np.ceil(n * cfg.test_fraction), 0).astype(np.int64)
    n_val = np.where(eligible, np.ceil(n * cfg.validation_fraction), 0).astype(np.int64)
    n_test = np.minimum(n_test, np.maximum(n - 1, 0))
    n_val = np.minimum(n_val, np.maximum(n - 1 - n_test, 0))
    return n_test, n_val


def temporal_split(events: pd.DataFrame, cfg: SplitConfig) -> Split:
    """Split ``events`` per user by time; pure (no IO), deterministic for ties via ``event_id``."""
    ordered = events.sort_values(["user_id", "event_ts", "event_id"], kind="stable").reset_index(drop=True)
    position = ordered.groupby("user_id", sort=False).cumcount().to_numpy()
    n_user = ordered.groupby("user_id", sort=False)["user_id"].transform("size").to_numpy()
    n_test, n_val = holdout_counts(n_user, cfg)
    from_end = n_user - position  # 1 for the newest event of each user
    is_test = from_end <= n_test
    is_val = ~is_test & (from_end <= n_test + n_val)
    is_train = ~(is_test | is_val)
    return Split(
        train=ordered[is_train].reset_index(drop=True),
        validation=ordered[is_val].reset_index(drop=True),
        test=ordered[is_test].reset_index(drop=True),
    )


def global_cutoffs(events: pd.DataFrame, cfg: SplitConfig) -> tuple[datetime, datetime]:
    """T and T + d of a global split: the configured cutoff, or the newest event minus the test and
    validation days."""
    if events.empty:
        raise SplitError("cannot split an empty event log")
    d = timedelta(days=cfg.validation_days)
    if cfg.cutoff is not None:
        cutoff = pd.Timestamp(cfg.cutoff)
        cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff.tz_convert("UTC")
    else:
        newest = pd.to_datetime(events["event_ts"], utc=True).max()
        cutoff = newest - timedelta(days=cfg.test_days) - d
    return cutoff.to_pydatetime(), (cutoff + d).to_pydatetime()


def global_split(events: pd.DataFrame, cfg: SplitConfig) -> Split:
    """Split ``events`` by one time cut for everybody: train < T <= validation < T + d <= test (pure).

    Raises:
        SplitError: no event falls before T (nothing to train on).
    """
    cutoff, test_from = global_cutoffs(events, cfg)
    ordered = events.sort_values(["user_id", "event_ts", "event_id"], kind="stable").reset_index(drop=True)
    ts = pd.to_datetime(ordered["event_ts"], utc=True)
    is_train = (ts < cutoff).to_numpy()
    is_test = (ts >= test_from).to_numpy()
    if not is_train.any():
        raise SplitError(f"no event before the split cutoff {cutoff.isoformat()}: nothing to train on")
    return Split(
        train=ordered[is_train].reset_index(drop=True),
        validation=ordered[~is_train & ~is_test].reset_index(drop=True),
        test=ordered[is_test].reset_index(drop=True),
    )


def split_events(events: pd.DataFrame, cfg: SplitConfig) -> Split:
    """The split ``cfg.method`` names, checked: it fails when a user's held-out event precedes one of
    their training events."""
    from recsys.ingest.leakage import check_split_order

    split = global_split(events, cfg) if cfg.method == "global" else temporal_split(events, cfg)
    check_split_order(split.train, split.validation, "validation")
    check_split_order(split.train, split.test, "test")
    return split


def cut_settings(cfg: SplitConfig) -> dict[str, Any]:
    """The method and the settings that decide its cut, as recorded in ``split.json``."""
    dumped = cfg.model_dump(mode="json")
    return {"method": cfg.method, **{key: dumped[key] for key in CUT_SETTINGS[cfg.method]}}


def check_cut_settings(folder: Path, cfg: SplitConfig) -> None:
    """Refuse a split on disk that was cut with other settings than `cfg`'s (a split written before
    settings were recorded has no ``split.json`` and passes).

    Raises:
        SplitError: the recorded settings differ, naming each difference.
    """
    path = folder / SETTINGS_FILE
    if not path.exists():
        return
    recorded = json.loads(path.read_text())
    wanted = cut_settings(cfg)
    differ = [
        f"{key} {recorded.get(key)!r} (asked: {value!r})"
        for key, value in wanted.items()
        if recorded.get(key) != value
    ]
    if differ:
        raise SplitError(
            f"the {cfg.method} split in {folder} was cut with {', '.join(differ)}: "
            "use its settings, or remove that folder to cut it again"
        )


def write_split(state: StateDir, version: str, split: Split, cut: str | SplitConfig = "per_user") -> Path:
    """Write the three parts as Parquet under :func:`split_dir` (atomically; never overwrites).

    Args:
        cut: the method the parts were cut by, or the settings they were cut with (their method, and
            the settings recorded in ``split.json``).
    """
    settings = None if isinstance(cut, str) else cut
    target = split_dir(state, version, cut if isinstance(cut, str) else cut.method)
    if all((target / f"{part}.parquet").exists() for part in PARTS):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{version}-{uuid.uuid4().hex}"
    tmp.mkdir()
    files = [f"{part}.parquet" for part in PARTS]
    try:
        if settings is not None:
            # Written before the parts are in place, so a present split always names its settings.
            (tmp / SETTINGS_FILE).write_text(json.dumps(cut_settings(settings), sort_keys=True) + "\n")
            files.insert(0, SETTINGS_FILE)
        for part in PARTS:
            pq.write_table(to_arrow(getattr(split, part), EVENTS_SCHEMA), tmp / f"{part}.parquet")
        if target.exists():
            # The per-user folder also holds the global split's folder, so it is filled file by file
            # (each replace is atomic; the split counts as present once all three parts are).
            for name in files:
                os.replace(tmp / name, target / name)
        else:
            os.rename(tmp, target)
    except OSError:
        if not all((target / f"{part}.parquet").exists() for part in PARTS):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_split(state: StateDir, version: str, split: str | SplitConfig = "per_user") -> Split:
    """The split of a dataset version, as written by :func:`write_split`.

    Args:
        split: a method (``per_user`` or ``global``), or the settings of a configuration: their method,
            with the cut on disk checked against them.

    Raises:
        SplitError: the settings ask for another cut than the one on disk.
    """
    method = split if isinstance(split, str) else split.method
    folder = split_dir(state, version, method)
    if not isinstance(split, str):
        check_cut_settings(folder, split)
    frames: dict[str, pd.DataFrame] = {}
    for part in PARTS:
        path = folder / f"{part}.parquet"
        if not path.exists():
            raise MissingStateError(f"{path} not found: run the split for dataset {version} first")
        frames[part] = to_pandas(pq.read_table(path, schema=EVENTS_SCHEMA))
    return Split(train=frames["train"], validation=frames["validation"], test=frames["test"])


def run_split(config: PipelineConfig, dataset_version: str | None = None) -> SplitSummary:
    """Split a dataset version (default: the latest) and write it; a second run reuses the files."""
    from rich.console import Console

    from recsys.ingest.snapshot import load_table

    state = StateDir(config.state_dir)
    version = state.resolve_version(dataset_version)
    method = config.split.method
    folder = split_dir(state, version, method)
    created = not all((folder / f"{part}.parquet").exists() for part in PARTS)
    console = Console(stderr=True)
    if created:
        with console.status(f"splitting dataset {version} by time ({method})"):
            events = load_table(state, version, "interaction_events")
            write_split(state, version, split_events(events, config.split), config.split)
    else:
        check_cut_settings(folder, config.split)
    counts = {part: pq.ParquetFile(folder / f"{part}.parquet").metadata.num_rows for part in PARTS}
    console.print(
        f"split {version} ({method}): train {counts['train']:,}, "
        f"validation {counts['validation']:,}, test {counts['test']:,}"
    )
    return SplitSummary(version, created, counts["train"], counts["validation"], counts["test"], folder)


def export_split(state: StateDir, version: str, out_dir: Path, method: str = "per_user") -> dict[str, Path]:
    """Write each part of the split as plain Parquet (user_id, item_id, timestamp, event_type), so any
    outside library can be evaluated on exactly the same interactions.

    Returns:
        The written file of each part, by part name.
    """
    split = load_split(state, version, method)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for part in PARTS:
        frame = getattr(split, part)
        plain = pd.DataFrame(
            {
                "user_id": frame["user_id"].astype(str),
                "item_id": frame["item_id"].astype(str),
                "timestamp": frame["event_ts"],
                "event_type": frame["event_type"].astype(str),
            }
        )
        path = out_dir / f"{part}.parquet"
        plain.to_parquet(path, index=False)
        written[part] = path
    return written
