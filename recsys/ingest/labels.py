"""Training labels from the event log: engagement (click), satisfaction, and conversion with a delay.

Each event gets, per target, exactly one of ``positive``, ``negative`` or ``ambiguous`` (no label: the
event says nothing either way, and training skips it).

* ``click`` (engagement): any engagement (click, view, like, save, add_to_cart, purchase) is positive, a
  skip negative; an impression is positive when the user engaged with the item later in the same session,
  otherwise negative (shown, not engaged).
* ``satisfaction``: purchase, like and save are positive, skip negative; a view is positive at completion
  >= 0.8, negative at completion < 0.1 with dwell under 3 s, otherwise ambiguous; a click or
  add_to_cart is positive when it converted (below); the rest is ambiguous.
* ``conversion``: a click or add_to_cart is positive when the user bought the item within the delay
  window after it, negative only once that window has closed at the labelling time without a purchase,
  and ambiguous while it is still open; a purchase is positive; other events are ambiguous.

Completion is dwell over the item's ``duration_s``; without a duration (or dwell) a view is ambiguous.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

POSITIVE = "positive"
NEGATIVE = "negative"
AMBIGUOUS = "ambiguous"
LABELS: tuple[str, ...] = (NEGATIVE, AMBIGUOUS, POSITIVE)  # in order, for monotonicity checks
TARGETS: tuple[str, ...] = ("click", "satisfaction", "conversion")

ENGAGEMENTS: frozenset[str] = frozenset({"click", "view", "like", "save", "add_to_cart", "purchase"})
CONVERTIBLE: frozenset[str] = frozenset({"click", "add_to_cart"})
COMPLETE_AT = 0.8
ABANDONED_BELOW = 0.1
ABANDONED_DWELL_MS = 3000


def view_labels(completion: np.ndarray, dwell_ms: np.ndarray) -> np.ndarray:
    """Satisfaction label of views: watched to the end, abandoned at once, or in between (ambiguous).

    NaN completion (unknown duration or dwell) is ambiguous.

    >>> view_labels(np.array([0.9, 0.05, 0.05, 0.5, np.nan]), np.array([9e5, 2000, 5000, 1e4, 1e3])).tolist()
    ['positive', 'negative', 'ambiguous', 'ambiguous', 'ambiguous']
    """
    completion = np.asarray(completion, dtype="float64")
    dwell = np.asarray(dwell_ms, dtype="float64")
    negative = (completion < ABANDONED_BELOW) & (dwell < ABANDONED_DWELL_MS)
    labels: np.ndarray = np.select([completion >= COMPLETE_AT, negative], [POSITIVE, NEGATIVE], AMBIGUOUS)
    result: np.ndarray = labels.astype(object)
    return result


def completion_rate(events: pd.DataFrame, items: pd.DataFrame) -> np.ndarray:
    """Dwell over the item's duration per event; NaN without a dwell or a positive duration."""
    duration = events["item_id"].map(items.set_index("item_id")["duration_s"]).astype("float64")
    duration = duration.where(duration > 0)
    dwell_s = events["dwell_time_ms"].astype("float64") / 1000.0
    rate: np.ndarray = (dwell_s / duration).to_numpy(dtype="float64")
    return rate


def _first_purchase_after(events: pd.DataFrame) -> np.ndarray:
    """Per event, the time of the user's next purchase of the same item at or after it (NaT if none)."""
    keyed = events.assign(_row=np.arange(len(events)))
    purchases = keyed.loc[keyed["event_type"] == "purchase", ["user_id", "item_id", "event_ts"]]
    out = np.full(len(events), np.datetime64("NaT"), dtype="datetime64[us]")
    if purchases.empty:
        return out
    left = keyed[["user_id", "item_id", "event_ts", "_row"]].sort_values("event_ts", kind="stable")
    right = purchases.rename(columns={"event_ts": "purchase_ts"}).sort_values("purchase_ts", kind="stable")
    left = left.assign(event_ts=left["event_ts"].astype("datetime64[us, UTC]"))
    right = right.assign(purchase_ts=right["purchase_ts"].astype("datetime64[us, UTC]"))
    merged = pd.merge_asof(
        left,
        right,
        left_on="event_ts",
        right_on="purchase_ts",
        by=["user_id", "item_id"],
        direction="forward",
    )
    found = merged["purchase_ts"].notna().to_numpy()
    rows = merged["_row"].to_numpy()[found]
    out[rows] = merged["purchase_ts"][found].dt.tz_convert(None).to_numpy().astype("datetime64[us]")
    return out


def _engaged_later_in_session(events: pd.DataFrame) -> np.ndarray:
    """Per event, whether the user engaged with the same item at or after it within the same session."""
    keys = ["user_id", "item_id", "session_id"]
    work = events[keys].assign(_ts=events["event_ts"].astype("datetime64[us, UTC]").astype("int64"))
    engaged = events["event_type"].isin(ENGAGEMENTS).to_numpy()
    last = work[engaged].groupby(keys, sort=False)["_ts"].max().rename("_last").reset_index()
    latest = work.merge(last, on=keys, how="left")["_last"].to_numpy(dtype="float64")
    found: np.ndarray = ~np.isnan(latest) & (latest >= work["_ts"].to_numpy(dtype="float64"))
    return found


def label_events(
    events: pd.DataFrame,
    items: pd.DataFrame,
    *,
    as_of: pd.Timestamp | None = None,
    conversion_window: pd.Timedelta = pd.Timedelta(hours=72),
) -> pd.DataFrame:
    """One label per target for every event (same row order as ``events``).

    Args:
        events: ``interaction_events`` rows.
        items: ``items`` rows (``item_id``, ``duration_s``) for the completion rate.
        as_of: the labelling time; a conversion window that has not closed by then gives no negative.
            Default: the newest ``server_ts`` in ``events`` (the newest thing known).
        conversion_window: how long after a click a purchase still counts as its conversion.

    Returns:
        ``event_id``, ``completion`` and ``click``, ``satisfaction``, ``conversion`` labels.
    """
    n = len(events)
    if n == 0:
        return pd.DataFrame({"event_id": [], "completion": [], **{t: [] for t in TARGETS}}).astype(
            {"event_id": object, "completion": "float64", **dict.fromkeys(TARGETS, object)}
        )
    frame = events.reset_index(drop=True)
    kind = frame["event_type"].to_numpy(dtype=object)
    labelled_at = (frame["server_ts"].max() if as_of is None else pd.Timestamp(as_of)).tz_convert(None)
    completion = completion_rate(frame, items)
    event_ts = frame["event_ts"].dt.tz_convert(None).to_numpy().astype("datetime64[us]")

    purchase_ts = _first_purchase_after(frame)
    window = np.timedelta64(int(conversion_window / pd.Timedelta(microseconds=1)), "us")
    converted = ~np.isnat(purchase_ts) & (purchase_ts - event_ts <= window)
    window_closed = event_ts + window <= np.datetime64(labelled_at.to_datetime64(), "us")
    convertible = np.isin(kind, list(CONVERTIBLE))
    conversion = np.select(
        [kind == "purchase", convertible & converted, convertible & window_closed],
        [POSITIVE, POSITIVE, NEGATIVE],
        AMBIGUOUS,
    )

    is_impression = kind == "impression"
    click = np.select(
        [np.isin(kind, list(ENGAGEMENTS)), kind == "skip", is_impression & _engaged_later_in_session(frame)],
        [POSITIVE, NEGATIVE, POSITIVE],
        NEGATIVE,
    )
    click = np.where(is_impression | np.isin(kind, [*ENGAGEMENTS, "skip"]), click, AMBIGUOUS)

    views = view_labels(completion, frame["dwell_time_ms"].astype("float64").to_numpy())
    satisfaction = np.select(
        [
            np.isin(kind, ["purchase", "like", "save"]),
            kind == "skip",
            kind == "view",
            convertible & converted,
        ],
        [POSITIVE, NEGATIVE, views, POSITIVE],
        AMBIGUOUS,
    )
    return pd.DataFrame(
        {
            "event_id": frame["event_id"].to_numpy(dtype=object),
            "completion": completion,
            "click": click.astype(object),
            "satisfaction": satisfaction.astype(object),
            "conversion": conversion.astype(object),
        }
    )
