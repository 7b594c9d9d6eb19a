"""Checks that fail a run when the future leaks into training data.

* :func:`check_point_in_time`: every feature of an example must come from before the example. A
  feature's timestamp is the newest data it saw (strictly before the example), or, for snapshot tables
  whose value at S covers only events before S (``cutoff=True``, as the Feast snapshots of
  ``recsys/features``), a snapshot time at or before the example.
* :func:`check_split_order`: no validation or test event of a user is earlier than one of that user's
  training events.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

# Suffix of the columns that carry a feature row's snapshot time in point-in-time reads
# (``recsys.features.store.historical_features`` adds ``<feature view>__feature_ts``).
FEATURE_TS_SUFFIX = "__feature_ts"


class LeakageError(ValueError):
    """Training data that uses information from after the moment it describes."""


def check_point_in_time(
    frame: pd.DataFrame,
    feature_ts_columns: Sequence[str],
    example_ts: str = "event_timestamp",
    *,
    cutoff: bool = False,
) -> None:
    """Raise :class:`LeakageError` when a feature timestamp is not before its example's timestamp.

    Args:
        frame: point-in-time rows, one per example.
        feature_ts_columns: the feature timestamp column of each joined feature table; null means no
            feature was found (nothing leaked).
        example_ts: the example's own timestamp column.
        cutoff: the feature timestamps are exclusive cut-offs (snapshot at S saw events before S), so a
            snapshot taken exactly at the example's time is allowed.

    >>> rows = pd.DataFrame({"event_timestamp": pd.to_datetime(["2024-01-02"], utc=True),
    ...                      "feature_ts": pd.to_datetime(["2024-01-02"], utc=True)})
    >>> check_point_in_time(rows, ["feature_ts"], cutoff=True)
    >>> check_point_in_time(rows, ["feature_ts"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    recsys.ingest.leakage.LeakageError: 1 of 1 examples have feature_ts not before event_timestamp ...
    """
    if example_ts not in frame.columns:
        raise LeakageError(f"no example timestamp column {example_ts!r} to check leakage against")
    example = pd.to_datetime(frame[example_ts], utc=True)
    if example.isna().any():
        raise LeakageError(f"{int(example.isna().sum())} examples have no {example_ts}")
    for column in feature_ts_columns:
        if column not in frame.columns:
            raise LeakageError(f"no feature timestamp column {column!r} to check")
        feature = pd.to_datetime(frame[column], utc=True)
        late = (feature > example) if cutoff else (feature >= example)
        late = late & feature.notna()
        if late.any():
            first = int(late.to_numpy().argmax())
            raise LeakageError(
                f"{int(late.sum())} of {len(frame)} examples have {column} not before {example_ts} "
                f"(first: row {first}, feature {feature.iloc[first]}, example {example.iloc[first]})"
            )


def check_feature_rows(frame: pd.DataFrame, example_ts: str = "event_timestamp") -> None:
    """:func:`check_point_in_time` on the rows of a point-in-time read, whose snapshot columns end in
    :data:`FEATURE_TS_SUFFIX` and are exclusive cut-offs; rows without any such column are refused, since
    nothing would show where their features come from."""
    columns = [str(c) for c in frame.columns if str(c).endswith(FEATURE_TS_SUFFIX)]
    if not columns:
        raise LeakageError(
            f"rows carry no *{FEATURE_TS_SUFFIX} column: read features with a point-in-time read "
            "(recsys.features.store.historical_features)"
        )
    check_point_in_time(frame, columns, example_ts, cutoff=True)


def check_split_order(train: pd.DataFrame, held_out: pd.DataFrame, name: str = "test") -> None:
    """Raise :class:`LeakageError` when a user's held-out event is earlier than one of their training
    events (equal times are allowed: ties are broken by ``event_id`` in the per-user split)."""
    if train.empty or held_out.empty:
        return
    last_train = train.groupby("user_id")["event_ts"].max()
    first_held = held_out.groupby("user_id")["event_ts"].min()
    both = pd.concat([last_train.rename("train"), first_held.rename("held")], axis=1, join="inner")
    bad = both[both["held"] < both["train"]]
    if not bad.empty:
        user = bad.index[0]
        raise LeakageError(
            f"{len(bad)} users have {name} events before their last training event (first: user {user}, "
            f"{name} {bad.loc[user, 'held']}, train {bad.loc[user, 'train']})"
        )
