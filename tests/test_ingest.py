"""Ingest: the MovieLens mapping on a hand-made CSV directory, snapshots and idempotence."""

from __future__ import annotations

import csv
import doctest
import hashlib
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from factories import write_movielens_dir

from recsys.config import IngestConfig, PipelineConfig
from recsys.ingest import movielens
from recsys.ingest.movielens import SourceDataError, read_movielens, sample_user_ids
from recsys.ingest.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA
from recsys.ingest.snapshot import load_dataset
from recsys.ingest.stage import run_ingest
from recsys.state import StateDir

T0 = 1_000_000_000  # 2001-09-09T01:46:40Z

RATINGS = [
    # userId, movieId, rating, timestamp
    (1, 10, 4.0, T0),  # like (at the threshold)
    (1, 20, 2.5, T0 + 10 * 60),  # view (at skip_below, not under it)
    (1, 30, 2.0, T0 + 40 * 60),  # skip; gap of exactly 30 minutes: same session
    (1, 10, 5.0, T0 + 71 * 60),  # like; gap of 31 minutes: new session
    (2, 20, 3.5, T0 + 5),  # view
    (2, 40, 0.5, T0 + 6),  # skip
]
MOVIES = [
    (10, "Heat (1995)", "Action|Crime|Thriller"),
    (20, "Toy Story (1995)", "Adventure|Animation"),
    (30, "Untitled", "(no genres listed)"),
    (40, "Ghost, The (1990) ", "Romance"),
    (50, "Never Rated (2001)", "Drama"),
]
TAGS = [(1, 10, "Pacino", T0), (2, 10, "heist", T0 + 1), (2, 10, "pacino", T0 + 2), (1, 20, "pixar", T0)]


def write_movielens(folder: Path, ratings: Sequence[Sequence[object]] = RATINGS) -> Path:
    return write_movielens_dir(folder, ratings, MOVIES, TAGS)


def test_doctests() -> None:
    assert doctest.testmod(movielens).failed == 0


def test_ratings_map_to_typed_sessionised_events(tmp_path: Path) -> None:
    raw = read_movielens(IngestConfig(data_dir=write_movielens(tmp_path / "ml")))
    ev = raw.events.set_index(["user_id", "item_id", raw.events["event_ts"].astype("int64") // 10**6])
    expected = {
        ("1", "10", T0): ("like", "1-1"),
        ("1", "20", T0 + 600): ("view", "1-1"),
        ("1", "30", T0 + 2400): ("skip", "1-1"),
        ("1", "10", T0 + 4260): ("like", "1-2"),
        ("2", "20", T0 + 5): ("view", "2-1"),
        ("2", "40", T0 + 6): ("skip", "2-1"),
    }
    assert len(ev) == len(expected)
    for key, (event_type, session) in expected.items():
        assert (ev.loc[key, "event_type"], ev.loc[key, "session_id"]) == (event_type, session)
    first = raw.events[(raw.events["user_id"] == "1") & (raw.events["item_id"] == "20")].iloc[0]
    assert first["event_id"] == hashlib.sha1(f"1|20|{(T0 + 600) * 1000}|view".encode()).hexdigest()[:16]
    assert first["event_ts"] == pd.Timestamp(T0 + 600, unit="s", tz="UTC")
    assert first["server_ts"] == first["event_ts"]
    assert (
        raw.events[["dwell_time_ms", "surface", "device_type", "position", "request_id"]].isna().all().all()
    )
    assert list(raw.events.columns) == EVENTS_SCHEMA.names


def test_movies_and_tags_map_to_items(tmp_path: Path) -> None:
    items = read_movielens(IngestConfig(data_dir=write_movielens(tmp_path / "ml"))).items.set_index("item_id")
    assert len(items) == len(MOVIES)  # every movie, rated or not
    assert items.loc["10", "text"] == "Heat (1995). Genres: Action, Crime, Thriller. Tags: Pacino, heist."
    assert items.loc["30", "categories"] == []
    assert items.loc["30", "text"] == "Untitled."
    assert items.loc["10", "published_at"] == pd.Timestamp("1995-01-01", tz="UTC")
    assert items.loc["40", "published_at"] == pd.Timestamp("1990-01-01", tz="UTC")
    assert items.loc["40", "title"] == "Ghost, The (1990)"
    assert pd.isna(items.loc["30", "published_at"])
    assert items["duration_s"].isna().all()


def test_users_signup_is_first_event(tmp_path: Path) -> None:
    users = read_movielens(IngestConfig(data_dir=write_movielens(tmp_path / "ml"))).users.set_index("user_id")
    assert users.loc["1", "signup_ts"] == pd.Timestamp(T0, unit="s", tz="UTC")
    assert users.loc["2", "signup_ts"] == pd.Timestamp(T0 + 5, unit="s", tz="UTC")


def test_missing_source_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(SourceDataError, match="nowhere"):
        read_movielens(IngestConfig(data_dir=tmp_path / "nowhere"))
    folder = write_movielens(tmp_path / "ml")
    (folder / "tags.csv").unlink()
    with pytest.raises(SourceDataError, match=r"tags\.csv"):
        read_movielens(IngestConfig(data_dir=folder))


def test_sample_users_is_a_deterministic_seeded_subset() -> None:
    ids = pd.Series([str(i) for i in range(100)])
    first = sample_user_ids(ids, 10, seed=1)
    assert len(first) == 10 and first <= set(ids)
    assert first == sample_user_ids(ids.iloc[::-1], 10, seed=1)
    assert first != sample_user_ids(ids, 10, seed=2)
    assert sample_user_ids(ids, None, seed=1) == set(ids)


def test_ingest_writes_schema_exact_snapshot_once(tmp_path: Path) -> None:
    config = PipelineConfig(
        state_dir=tmp_path / "state", ingest=IngestConfig(data_dir=write_movielens(tmp_path / "ml"))
    )
    first = run_ingest(config)
    assert first.created
    assert first.counts["interaction_events"] == {"rows_in": 6, "clean": 6, "quarantined": 0}
    state = StateDir(config.state_dir)
    assert state.latest_dataset_version() == first.dataset_version
    # Events are partitioned by event date; every partition file carries exactly the shared schema.
    partitions = sorted((first.path / "interaction_events").glob("event_date=*/*.parquet"))
    assert partitions
    for path in partitions:
        assert pq.read_schema(path).remove_metadata() == EVENTS_SCHEMA
    for name, schema in [("items", ITEMS_SCHEMA), ("users", USERS_SCHEMA)]:
        assert pq.read_schema(first.path / f"{name}.parquet").remove_metadata() == schema
    manifest_mtime = (first.path / "manifest.json").stat().st_mtime_ns
    again = run_ingest(config)
    assert (again.dataset_version, again.created) == (first.dataset_version, False)
    assert (first.path / "manifest.json").stat().st_mtime_ns == manifest_mtime
    assert [p.name for p in state.datasets.iterdir() if not p.name.startswith("LATEST")] == [
        first.dataset_version
    ]
    dataset = load_dataset(state)
    assert dataset.manifest["dataset_version"] == first.dataset_version
    assert dataset.manifest["source"]["files"]["ratings.csv"]["sha256"]
    assert len(dataset.events) == 6 and len(dataset.items) == 5 and len(dataset.users) == 2


def test_bad_rows_are_quarantined_and_change_nothing_else(tmp_path: Path) -> None:
    ratings = [*RATINGS, (3, 999, 4.0, T0), (3, 10, "", T0 + 1)]  # unknown movie; missing rating
    config = PipelineConfig(
        state_dir=tmp_path / "state", ingest=IngestConfig(data_dir=write_movielens(tmp_path / "ml", ratings))
    )
    summary = run_ingest(config)
    assert summary.counts["interaction_events"] == {"rows_in": 8, "clean": 6, "quarantined": 2}
    quarantine = pq.read_table(summary.path / "quarantine.parquet").to_pandas()
    reasons = sorted(quarantine["reason"])
    assert "expect_column_values_to_be_in_set(item_id_in_items)" in reasons[0]
    assert "expect_column_values_to_not_be_null(event_type)" in reasons[1]


@pytest.mark.slow
def test_sample_of_real_movielens_adds_up(tmp_path: Path) -> None:
    cfg = IngestConfig(sample_users=50, seed=0)
    if not Path(cfg.data_dir).is_dir():
        pytest.skip(f"MovieLens not found at {cfg.data_dir}")
    summary = run_ingest(PipelineConfig(state_dir=tmp_path / "state", ingest=cfg))
    with (Path(cfg.data_dir) / "ratings.csv").open(newline="") as handle:
        ratings = list(csv.DictReader(handle))
    keep = sample_user_ids(pd.Series([r["userId"] for r in ratings]), 50, seed=0)
    n_ratings = sum(r["userId"] in keep for r in ratings)
    with (Path(cfg.data_dir) / "movies.csv").open(newline="") as handle:
        n_movies = sum(1 for _ in csv.DictReader(handle))
    counts = summary.counts
    assert counts["users"]["clean"] == 50
    assert counts["interaction_events"]["rows_in"] == n_ratings
    assert counts["items"]["rows_in"] == n_movies
    for table in counts.values():
        assert table["rows_in"] == table["clean"] + table["quarantined"]
    dataset = load_dataset(StateDir(tmp_path / "state"), summary.dataset_version)
    assert len(dataset.events) == counts["interaction_events"]["clean"]
    assert set(dataset.events["user_id"]) == keep
    assert dataset.events["event_id"].is_unique
