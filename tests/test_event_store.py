"""Date-partitioned events in a snapshot: layout, sort order, the two readers, old snapshots, catalogue."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from recsys.ingest import event_store
from recsys.ingest.schema import EVENTS_SCHEMA, to_arrow
from recsys.ingest.snapshot import load_dataset, load_table, save_dataset
from recsys.ingest.versions import dataset_catalogue
from recsys.state import StateDir

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def make_events(n_users: int = 30, per_user: int = 12) -> pd.DataFrame:
    """Each user has an event every 5 hours from hour u: they span several days; sessions of 3 events."""
    rows = []
    for u in range(n_users):
        for k in range(per_user):
            ts = T0 + timedelta(hours=5 * k + u)
            rows.append(
                {
                    "event_id": f"e{u:02d}{k:02d}",
                    "user_id": f"u{u:02d}",
                    "item_id": f"i{(u + k) % 7}",
                    "event_type": "click",
                    "dwell_time_ms": None,
                    "surface": "homepage",
                    "session_id": f"u{u:02d}-{k // 3 + 1}",
                    "device_type": "mobile",
                    "position": k,
                    "request_id": None,
                    "event_ts": ts,
                    "server_ts": ts,
                }
            )
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # writers must not rely on input order
    for column in ("event_ts", "server_ts"):
        frame[column] = pd.to_datetime(frame[column], utc=True).astype("datetime64[us, UTC]")
    frame["dwell_time_ms"] = frame["dwell_time_ms"].astype("Int64")
    frame["position"] = frame["position"].astype("Int32")
    return frame


def write(tmp_path: Path, **kwargs: int) -> Path:
    events = make_events(**kwargs)
    event_store.write_partitioned_events(to_arrow(events, EVENTS_SCHEMA), tmp_path)
    return tmp_path


def test_partitions_hold_their_date_sorted_by_user_and_time(tmp_path: Path) -> None:
    events = make_events()
    written = event_store.write_partitioned_events(to_arrow(events, EVENTS_SCHEMA), tmp_path)
    expected = events["event_ts"].dt.strftime("%Y-%m-%d").value_counts().to_dict()
    assert written == expected
    for day, n in expected.items():
        table = pq.read_table(tmp_path / "interaction_events" / f"event_date={day}" / "part-0.parquet")
        assert table.num_rows == n
        frame = table.to_pandas()
        assert (frame["event_ts"].dt.strftime("%Y-%m-%d") == day).all()
        assert frame.equals(frame.sort_values(["user_id", "event_ts", "event_id"]).reset_index(drop=True))
    assert event_store.count_events(tmp_path) == len(events)


def test_user_history_is_newest_first_and_prunes_partitions(tmp_path: Path) -> None:
    write(tmp_path)
    since = T0 + timedelta(days=1)
    history = event_store.read_user_history(tmp_path, "u03", since=since, limit=4)
    # u03's events are at T0 + 3h + 5h k; the newest is k=11 (T0 + 58 h).
    assert history["event_id"].tolist() == ["e0311", "e0310", "e0309", "e0308"]
    assert (history["user_id"] == "u03").all()
    everything = event_store.read_user_history(tmp_path, "u03")
    assert len(everything) == 12 and everything["event_ts"].is_monotonic_decreasing
    # The date filter leaves out the partitions before `since` without opening them.
    dataset = event_store.events_dataset(tmp_path)
    condition = event_store._date_filter(tmp_path, since.date(), None)
    assert condition is not None
    kept = {Path(f.path).parent.name for f in dataset.get_fragments(filter=condition)}
    assert kept == {f"event_date={d}" for d in ("2024-03-02", "2024-03-03", "2024-03-04")}


def test_session_reads_in_time_order_across_midnight(tmp_path: Path) -> None:
    write(tmp_path)
    # u23's session 2 (k = 3..5) is at T0 + 38, 43, 48 h: it runs from 2 March into 3 March.
    session = event_store.read_session(tmp_path, "u23-2", on_date=date(2024, 3, 2))
    assert session["event_id"].tolist() == ["e2303", "e2304", "e2305"]
    assert session["event_ts"].dt.day.tolist() == [2, 2, 3]
    assert event_store.read_session(tmp_path, "u23-2").equals(session)


def test_row_group_statistics_let_a_user_read_skip_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_store, "ROW_GROUP_ROWS", 10)
    write(tmp_path)
    fragment = next(iter(event_store.events_dataset(tmp_path).get_fragments()))
    groups = fragment.split_by_row_group()
    matching = list(fragment.split_by_row_group(filter=ds.field("user_id") == "u05"))
    assert 1 <= len(matching) < len(groups) // 2


def test_snapshot_round_trip_and_old_single_file_layout(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    events = make_events()
    items = pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(7)],
            "title": "t",
            "text": "t",
            "categories": [["Drama"]] * 7,
            "duration_s": 60.0,
            "published_at": pd.Series([pd.NaT] * 7, dtype="datetime64[us, UTC]"),
        }
    )
    users = pd.DataFrame({"user_id": sorted(events["user_id"].unique()), "signup_ts": T0, "region": None})
    users["signup_ts"] = users["signup_ts"].astype("datetime64[us, UTC]")
    version, created = save_dataset(state, events, items, users, source={"name": "synthetic"})
    assert created and (state.dataset(version) / "interaction_events").is_dir()
    loaded = load_dataset(state, version).events
    key = ["event_id"]
    pd.testing.assert_frame_equal(
        loaded.sort_values(key).reset_index(drop=True), events.sort_values(key).reset_index(drop=True)
    )
    # A snapshot written before partitioning (one file) still reads.
    old = state.dataset("old")
    old.mkdir()
    pq.write_table(to_arrow(events, EVENTS_SCHEMA), old / "interaction_events.parquet")
    assert len(load_table(state, "old", "interaction_events")) == len(events)
    assert len(event_store.read_user_history(old, "u01")) == 12

    (old / "manifest.json").write_text(json.dumps({"created_at": "2000-01-01", "counts": {}}))
    catalogue = dataset_catalogue(state)
    assert [e.dataset_version for e in catalogue] == ["old", version]
    entry = catalogue[1]
    assert (entry.events, entry.items, entry.users, entry.latest) == (len(events), 7, 30, True)
    assert entry.first_event == T0
    assert entry.last_event == T0 + timedelta(hours=5 * 11 + 29)
    assert catalogue[0].first_event == T0 and not catalogue[0].latest
