"""Event-log cleaning: duplicates, bursts, bots, outlier dwell and late arrivals, with a reconciliation.

Real logs repeat themselves (retries, double clicks), carry automated traffic and arrive late. Cleaning
removes the first two, caps the third's dwell outliers and counts late events, and it accounts for every
row it drops: rows in = clean + quarantined + duplicates + bots, or ingest stops. Every step is a pure
function on the ``interaction_events`` frame; :func:`clean_events` runs them in order and is idempotent
(cleaning a cleaned log changes nothing).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

COLLAPSE_KEY: tuple[str, ...] = ("user_id", "item_id", "event_type", "session_id")


class CleaningConfig(BaseModel):
    """Thresholds of the cleaning steps.

    The bot thresholds sit above the busiest MovieLens raters (392 ratings in one clock minute and 1,013
    in one day, from bulk rating pages), so only traffic no person produces is removed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Copies of one (user, item, event_type, session) within this many minutes of a kept one collapse.
    duplicate_window_minutes: float = Field(default=5.0, ge=0)
    # A user with more events than this in any clock minute (UTC) is a bot.
    bot_max_events_per_minute: int = Field(default=600, ge=1)
    # A user with more events than this in any UTC day is a bot.
    bot_max_events_per_day: int = Field(default=5000, ge=1)
    # A view's dwell is capped at this multiple of its item's median view dwell.
    dwell_cap_multiple: float = Field(default=4.0, gt=0)
    # An event that reached the server this many minutes after it happened is late (kept, counted).
    late_after_minutes: float = Field(default=60.0, ge=0)
    # An event or server time more than this many minutes after ingest time is impossible: quarantined.
    future_tolerance_minutes: float = Field(default=5.0, ge=0)


class ReconciliationError(ValueError):
    """Rows were lost or invented between reading the source and writing the clean table."""


@dataclass(frozen=True)
class Reconciliation:
    """Where every input event went; :meth:`check` fails unless the parts add up to ``rows_in``."""

    rows_in: int
    clean: int
    quarantined: int
    duplicates: int
    bots: int
    late: int = 0
    dwell_capped: int = 0
    bot_users: int = 0

    def check(self) -> Reconciliation:
        """Raise :class:`ReconciliationError` if rows_in != clean + quarantined + duplicates + bots."""
        parts = self.clean + self.quarantined + self.duplicates + self.bots
        if parts != self.rows_in:
            raise ReconciliationError(
                f"events do not reconcile: rows in {self.rows_in:,} != clean {self.clean:,} + quarantined "
                f"{self.quarantined:,} + duplicates {self.duplicates:,} + bots {self.bots:,} (= {parts:,})"
            )
        return self

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class CleaningResult:
    """Clean events and what each step removed or changed (row counts)."""

    events: pd.DataFrame
    duplicate_ids: int
    collapsed: int
    bots: int
    bot_users: int
    dwell_capped: int
    late: int

    @property
    def duplicates(self) -> int:
        return self.duplicate_ids + self.collapsed


def quarantine_future(
    events: pd.DataFrame, now: pd.Timestamp, tolerance: pd.Timedelta
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off events stamped after ``now + tolerance`` (a wrong device clock, a unit mix-up): they
    go to quarantine with the reason and the row as JSON, the rest is returned unchanged."""
    limit = now + tolerance
    future = (events["event_ts"] > limit) | (events["server_ts"] > limit)
    future = future.fillna(False).to_numpy(dtype=bool)
    records = events[future].astype(object).where(events[future].notna(), None).to_dict(orient="records")
    quarantine = pd.DataFrame(
        {
            "table": ["interaction_events"] * len(records),
            "reason": [f"timestamp in the future (after {limit.isoformat()})"] * len(records),
            "record": [json.dumps(r, default=str) for r in records],
        },
        dtype=object,
    )
    return events[~future].reset_index(drop=True), quarantine


def drop_duplicate_ids(events: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep one copy of an event sent more than once: same ``event_id``, same content but ``server_ts``.

    The earliest arrival is kept. Copies that share an id but differ in content are all kept: the data
    contracts quarantine them, since nothing says which copy is right.

    >>> frame = pd.DataFrame({"event_id": ["a", "a", "b", "b"], "x": [1, 1, 2, 3], "server_ts": [2, 1, 0, 0]})
    >>> kept, dropped = drop_duplicate_ids(frame)
    >>> kept[["x", "server_ts"]].values.tolist(), dropped
    ([[1, 1], [2, 0], [3, 0]], 1)
    """
    events = events.reset_index(drop=True)
    if events.empty:
        return events, 0
    ordered = events.sort_values("server_ts", kind="stable")
    content = [name for name in ordered.columns if name != "server_ts"]
    repeated = ordered.duplicated(subset=content, keep="first")
    kept = events.drop(index=ordered.index[repeated.to_numpy()])
    return kept.reset_index(drop=True), int(repeated.sum())


def collapse_repeats(events: pd.DataFrame, window: pd.Timedelta) -> tuple[pd.DataFrame, int]:
    """Collapse copies of one (user, item, event_type, session) within ``window`` of a kept copy.

    Per key, in time order, the first event is kept and so is every event more than ``window`` after the
    last kept one; the rest are double clicks and retries. Kept events of one key are therefore always more
    than ``window`` apart, so collapsing twice changes nothing. Rows with a null key are left to the
    contracts.
    """
    events = events.reset_index(drop=True)
    if events.empty:
        return events, 0
    keys = list(COLLAPSE_KEY)
    has_key = events[keys].notna().all(axis=1).to_numpy()
    work = events[has_key].sort_values([*keys, "event_ts", "event_id"], kind="stable")
    key_id = work.groupby(keys, sort=False).ngroup().to_numpy()
    ts = work["event_ts"].astype("datetime64[us, UTC]").astype("int64").to_numpy()
    limit = int(window / pd.Timedelta(microseconds=1))
    first = np.r_[True, key_id[1:] != key_id[:-1]]
    gap_prev = np.r_[0, np.diff(ts)]
    # kept: 1, dropped: 0, undecided: -1. An event far from its predecessor is far from any kept copy too.
    state = np.where(first | (gap_prev > limit), 1, -1)
    while (undecided := np.flatnonzero(state == -1)).size:
        anchor_pos = np.maximum.accumulate(np.where(state == 1, np.arange(len(state)), 0))
        close = ts[undecided] - ts[anchor_pos[undecided]] <= limit
        state[undecided[close]] = 0
        rest = undecided[~close]
        # The earliest undecided event of each key past its anchor's window becomes the next anchor.
        if rest.size:
            new_anchor = rest[np.r_[True, key_id[rest[1:]] != key_id[rest[:-1]]]]
            state[new_anchor] = 1
    dropped_index = work.index[state == 0]
    kept = events.drop(index=dropped_index).reset_index(drop=True)
    return kept, len(dropped_index)


def find_bots(events: pd.DataFrame, cfg: CleaningConfig) -> set[str]:
    """Users whose activity no person produces: too many events in one clock minute or in one day."""
    if events.empty:
        return set()
    ts = events["event_ts"]
    bots: set[str] = set()
    for freq, limit in (("min", cfg.bot_max_events_per_minute), ("D", cfg.bot_max_events_per_day)):
        counts = events.groupby([events["user_id"], ts.dt.floor(freq)], sort=False).size()
        bots |= {str(user) for user in counts[counts > limit].index.get_level_values(0).unique()}
    return bots


def _views(events: pd.DataFrame) -> np.ndarray:
    return np.asarray(
        (events["event_type"] == "view").to_numpy() & events["dwell_time_ms"].notna().to_numpy()
    )


def dwell_caps(events: pd.DataFrame, multiple: float) -> pd.Series:
    """Per item id, ``multiple`` times its median view dwell, floored: the most dwell a view may keep."""
    is_view = _views(events)
    dwell = events.loc[is_view, "dwell_time_ms"].astype("float64")
    median = dwell.groupby(events.loc[is_view, "item_id"].to_numpy()).median()
    return np.floor(median * multiple)


def apply_dwell_caps(events: pd.DataFrame, caps: pd.Series) -> tuple[pd.DataFrame, int]:
    """Lower each view's dwell to its item's cap (:func:`dwell_caps`); items without a cap keep theirs."""
    is_view = _views(events)
    if not is_view.any():
        return events, 0
    dwell = events.loc[is_view, "dwell_time_ms"].astype("float64")
    cap = events.loc[is_view, "item_id"].map(caps).astype("float64")
    over = dwell > cap
    if not over.any():
        return events, 0
    capped = events.copy()
    capped.loc[over[over].index, "dwell_time_ms"] = cap[over].astype("int64").to_numpy()
    capped["dwell_time_ms"] = capped["dwell_time_ms"].astype("Int64")
    return capped, int(over.sum())


def cap_dwell(events: pd.DataFrame, multiple: float) -> tuple[pd.DataFrame, int]:
    """Cap each view's dwell at ``multiple`` times its item's median view dwell (left idle, not watching).

    Capping leaves each item's median where it was, so capping twice changes nothing.
    """
    return apply_dwell_caps(events, dwell_caps(events, multiple))


def count_late(events: pd.DataFrame, threshold: pd.Timedelta) -> int:
    """Events that reached the server more than ``threshold`` after they happened (kept in event time)."""
    return int(((events["server_ts"] - events["event_ts"]) > threshold).sum())


def clean_events(events: pd.DataFrame, cfg: CleaningConfig | None = None) -> CleaningResult:
    """Run every cleaning step, in order: ids, bursts, bots, dwell cap, late count.

    Bots are judged after duplicates collapse, so a retry storm alone does not make a user a bot, and
    the dwell medians after bots leave, so automated traffic does not move them.
    """
    cfg = cfg or CleaningConfig()
    frame, duplicate_ids = drop_duplicate_ids(events)
    frame, collapsed = collapse_repeats(frame, pd.Timedelta(minutes=cfg.duplicate_window_minutes))
    bot_users = find_bots(frame, cfg)
    is_bot = frame["user_id"].isin(bot_users).to_numpy()
    frame = frame[~is_bot].reset_index(drop=True)
    frame, dwell_capped = cap_dwell(frame, cfg.dwell_cap_multiple)
    late = count_late(frame, pd.Timedelta(minutes=cfg.late_after_minutes))
    return CleaningResult(
        events=frame,
        duplicate_ids=duplicate_ids,
        collapsed=collapsed,
        bots=int(is_bot.sum()),
        bot_users=len(bot_users),
        dwell_capped=dwell_capped,
        late=late,
    )
