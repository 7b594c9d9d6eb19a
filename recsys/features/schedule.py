"""When feature snapshots are taken.

A snapshot at time S summarises only events with ``event_ts < S`` and is stamped ``feature_ts = S``, so a
point-in-time join (feature_ts <= the example's time) can never see the example's own event or later ones.
"""

from __future__ import annotations

from datetime import datetime, timedelta

# The last snapshot sits this far after the newest event, so that it includes that event and is what the
# online store serves.
FINAL_SNAPSHOT_OFFSET = timedelta(seconds=1)


class ScheduleError(ValueError):
    """Snapshot bounds that cannot describe a schedule."""


def snapshot_times(first_event: datetime, last_event: datetime, every_days: int) -> list[datetime]:
    """Snapshot times: every ``every_days`` after the first event while not after the last, then one final.

    Snapshot ``k`` (1-based) is ``first_event + k * every_days``; an event at ``t`` first appears in
    snapshot ``bucket_index(t)``. The final snapshot is ``last_event + FINAL_SNAPSHOT_OFFSET``.

    >>> from datetime import UTC
    >>> t0 = datetime(2000, 1, 1, tzinfo=UTC)
    >>> [s.date().isoformat() for s in snapshot_times(t0, t0 + timedelta(days=25), 10)]
    ['2000-01-11', '2000-01-21', '2000-01-26']
    """
    if every_days < 1:
        raise ScheduleError(f"snapshot_every_days must be >= 1, got {every_days}")
    if last_event < first_event:
        raise ScheduleError(f"last event {last_event} is before first event {first_event}")
    step = timedelta(days=every_days)
    times: list[datetime] = []
    current = first_event + step
    while current <= last_event:
        times.append(current)
        current += step
    times.append(last_event + FINAL_SNAPSHOT_OFFSET)
    return times


def bucket_index(event_ts: datetime, first_event: datetime, every_days: int, n_snapshots: int) -> int:
    """1-based index of the first snapshot that counts an event at ``event_ts`` (the Spark job's rule).

    >>> from datetime import UTC
    >>> t0 = datetime(2000, 1, 1, tzinfo=UTC)
    >>> [bucket_index(t0 + timedelta(days=d), t0, 10, 3) for d in (0, 9, 10, 25)]
    [1, 1, 2, 3]
    """
    step_us = every_days * 86_400_000_000
    elapsed_us = (event_ts - first_event) // timedelta(microseconds=1)
    return min(elapsed_us // step_us + 1, n_snapshots)
