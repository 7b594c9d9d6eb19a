"""Cleaning inside the ingest stage: resent events and bots leave, and the manifest accounts for them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from factories import write_movielens_dir

from recsys.config import IngestConfig, PipelineConfig
from recsys.ingest.cleaning import CleaningConfig
from recsys.ingest.stage import run_ingest

T0 = 1_000_000_000


def write_source(folder: Path, ratings: Sequence[Sequence[object]]) -> Path:
    movies = [(m, f"Movie {m} (1999)", "Drama") for m in range(1, 6)]
    return write_movielens_dir(folder, ratings, movies)


def test_ingest_drops_resent_events_and_bots_and_reconciles(tmp_path: Path) -> None:
    human = [(1, 1, 4.0, T0), (1, 2, 3.0, T0 + 600), (2, 3, 1.0, T0 + 5)]
    resent = [(1, 1, 4.0, T0)]  # the same rating delivered twice
    bot = [(9, m, 5.0, T0 + m) for m in range(1, 5)]  # 4 ratings in one minute
    config = PipelineConfig(
        state_dir=tmp_path / "state",
        ingest=IngestConfig(data_dir=write_source(tmp_path / "ml", human + resent + bot)),
        cleaning=CleaningConfig(bot_max_events_per_minute=3),
    )
    summary = run_ingest(config)
    assert summary.counts["interaction_events"] == {"rows_in": 8, "clean": 3, "quarantined": 0}
    manifest = json.loads((summary.path / "manifest.json").read_text())
    assert manifest["reconciliation"]["interaction_events"] == {
        "rows_in": 8,
        "clean": 3,
        "quarantined": 0,
        "duplicates": 1,
        "bots": 4,
        "late": 0,
        "dwell_capped": 0,
        "bot_users": 1,
    }
    assert manifest["cleaning_config"]["bot_max_events_per_minute"] == 3
    assert manifest["counts"]["interaction_events"]["rows_in"] == 8


@pytest.mark.slow
def test_real_movielens_is_untouched_by_cleaning(tmp_path: Path) -> None:
    cfg = IngestConfig()
    if not Path(cfg.data_dir).is_dir():
        pytest.skip(f"MovieLens not found at {cfg.data_dir}")
    summary = run_ingest(PipelineConfig(state_dir=tmp_path / "state", ingest=cfg))
    assert summary.counts["interaction_events"] == {"rows_in": 100_836, "clean": 100_836, "quarantined": 0}
    manifest = json.loads((summary.path / "manifest.json").read_text())
    report = manifest["reconciliation"]["interaction_events"]
    assert (report["duplicates"], report["bots"], report["late"], report["dwell_capped"]) == (0, 0, 0, 0)
