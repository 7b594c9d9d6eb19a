"""Chunked ingest gives exactly what validating and cleaning the whole log at once gives."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys.ingest.chunked import ChunkedCleaner, PartitionedLog, PartitionLayoutError, plan_chunks
from recsys.ingest.cleaning import CleaningConfig
from recsys.ingest.event_store import read_events
from recsys.ingest.schema import EVENTS_SCHEMA, to_arrow
from recsys.ingest.simulated import read_simulated
from recsys.ingest.snapshot import SnapshotWriter, canonical_table
from recsys.ingest.stage import _clean_in_memory
from recsys.simulator.settings import SimulatorConfig
from recsys.simulator.stage import run_simulate
from recsys.state import StateDir

CLEANING = CleaningConfig(bot_max_events_per_day=1_000)
# Bots at 2,000 clicks a day for two days: at least one whole UTC day above the limit of 1,000.
SIMULATOR = SimulatorConfig(
    n_users=400, n_items=120, days=5, sessions_per_user=3.0, bot_fraction=0.01, bot_events_per_day=2_000
)
NOW = pd.Timestamp("2025-01-01", tz="UTC")


def _with_traps(out: Path) -> None:
    """Add events that only a chunk-aware ingest gets right: a repeat across midnight, an id in two
    days with different content, a resent copy, an unknown item and a future timestamp."""
    events = read_events(out)
    base = events[(events["event_type"] == "click") & events["request_id"].notna()].iloc[0]

    def event(event_id: str, ts: str, **changes: object) -> dict[str, object]:
        row: dict[str, object] = base.to_dict() | {
            "event_id": event_id,
            "event_ts": pd.Timestamp(ts, tz="UTC"),
        }
        row["server_ts"] = pd.Timestamp(ts, tz="UTC") + pd.Timedelta(seconds=1)
        return row | changes

    day2 = [
        event("late-night", "2024-01-02T23:58:00", session_id="trap-1"),
        event("twice", "2024-01-02T10:00:00"),
        event("resent", "2024-01-02T11:00:00"),
        event("resent", "2024-01-02T11:00:00", server_ts=pd.Timestamp("2024-01-02T12:00:00", tz="UTC")),
        event("unknown-item", "2024-01-02T12:00:00", item_id="no-such-item"),
    ]
    day3 = [
        event("after-midnight", "2024-01-03T00:01:00", session_id="trap-1"),  # collapses into late-night
        event("twice", "2024-01-03T10:00:00"),  # same id, other content: both copies are quarantined
        event("future", "2024-01-03T10:00:00", server_ts=pd.Timestamp("2099-01-01", tz="UTC")),
    ]
    for day, rows in (("2024-01-02", day2), ("2024-01-03", day3)):
        frame = pd.DataFrame(rows).astype(events.dtypes.to_dict())
        pq.write_table(
            to_arrow(frame, EVENTS_SCHEMA), out / "interaction_events" / f"event_date={day}" / "x.parquet"
        )


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("chunked") / "simulated"
    run_simulate(SIMULATOR, out)
    _with_traps(out)
    return out


def test_chunked_cleaning_equals_the_whole_log_at_once(simulated: Path, tmp_path: Path) -> None:
    from data_contracts import validate_table

    raw = read_simulated(simulated)
    items = validate_table("items", raw.items).clean
    users = validate_table("users", raw.users).clean
    known_users, known_items = pd.Index(users["user_id"]), pd.Index(items["item_id"])
    small = (canonical_table("items", items), canonical_table("users", users))

    whole = _clean_in_memory(raw.events, CLEANING, known_users, known_items, NOW)
    with SnapshotWriter(StateDir(tmp_path / "whole")) as writer:
        writer.add_events(canonical_table("interaction_events", whole.events))
        whole_version, _ = writer.finish(*small, pd.concat(whole.quarantine), {})

    log = PartitionedLog(simulated)
    work = tmp_path / "work"
    work.mkdir()
    # One day a chunk: every day boundary is a chunk boundary.
    cleaner = ChunkedCleaner(log, CLEANING, known_users, known_items, NOW, work, chunk_rows=1)
    assert len(cleaner.chunks) == SIMULATOR.days
    with SnapshotWriter(StateDir(tmp_path / "chunked")) as writer:
        chunked = cleaner.run(writer)
        chunked_version, _ = writer.finish(*small, pd.concat(chunked.quarantine), {})

    counts = ("rows_in", "clean", "quarantined", "duplicates", "bots", "bot_users", "dwell_capped", "late")
    assert {c: getattr(chunked, c) for c in counts} == {c: getattr(whole, c) for c in counts}
    assert chunked.rows_in == len(raw.events)
    assert chunked.bot_users >= 1 and chunked.dwell_capped >= 1 and chunked.late >= 1
    assert chunked_version == whole_version
    clean = read_events(StateDir(tmp_path / "chunked").dataset(chunked_version))
    expected = whole.events.sort_values("event_id", ignore_index=True)
    pd.testing.assert_frame_equal(clean.sort_values("event_id", ignore_index=True), expected)
    ids = set(clean["event_id"])
    assert {"late-night", "resent"} <= ids
    assert not ids & {"after-midnight", "twice", "unknown-item", "future"}
    quarantined = pd.concat(chunked.quarantine)["record"].str.extract(r'"event_id": "([^"]+)"')[0]
    assert sorted(quarantined[quarantined.isin(["twice", "unknown-item", "future"])]) == [
        "future",
        "twice",
        "twice",
        "unknown-item",
    ]
    assert not list(work.iterdir())  # the first pass's files are gone


def test_a_partition_holding_another_dates_events_is_refused(simulated: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(simulated, copy)
    first = next((copy / "interaction_events").glob("event_date=2024-01-01"))
    shutil.copy(
        next((copy / "interaction_events" / "event_date=2024-01-04").glob("*.parquet")), first / "y.parquet"
    )
    cleaner = ChunkedCleaner(
        PartitionedLog(copy), CLEANING, pd.Index([]), pd.Index([]), NOW, tmp_path, chunk_rows=1
    )
    with (
        pytest.raises(PartitionLayoutError, match="hold events dated 2024-01-04"),
        SnapshotWriter(StateDir(tmp_path / "state")) as writer,
    ):
        cleaner.run(writer)


def test_chunks_are_runs_of_whole_days() -> None:
    assert plan_chunks({"a": 5, "b": 5, "c": 5}, 10) == [("a", "b"), ("c",)]
    assert plan_chunks({"a": 50}, 10) == [("a",)]
    assert plan_chunks({}, 10) == []
