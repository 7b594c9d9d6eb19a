"""The simulator's output: schemas and contracts, the behaviour it promises, drift, reproducibility."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys.ingest.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, USERS_SCHEMA, to_pandas
from recsys.simulator.settings import DriftSwitch, SimulatorConfig
from recsys.simulator.stage import run_simulate
from recsys.simulator.world import UnknownIdError, World
from recsys.simulator.writer import read_events

SMALL = SimulatorConfig(n_users=3_000, n_items=800, days=20, chunk_users=1_000, bot_fraction=1e-3, seed=7)
DRIFT_AT = datetime(2024, 1, 11, tzinfo=UTC)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("sim") / "run"
    run_simulate(SMALL, out)
    return out, to_pandas(read_events(out))


def test_tables_have_the_ingest_schemas(run: tuple[Path, pd.DataFrame]) -> None:
    out, events = run
    assert read_events(out).schema == EVENTS_SCHEMA
    assert pq.read_schema(out / "items.parquet").remove_metadata() == ITEMS_SCHEMA
    assert pq.read_table(out / "users.parquet").num_rows == SMALL.n_users
    assert pq.read_schema(out / "users.parquet").remove_metadata() == USERS_SCHEMA
    assert events["event_id"].is_unique
    assert len(list((out / "interaction_events").glob("event_date=*"))) == SMALL.days


def test_position_bias_lowers_ctr(run: tuple[Path, pd.DataFrame]) -> None:
    _, events = run
    shown = events[events["event_type"] == "impression"].groupby("position").size()
    clicked = events[(events["event_type"] == "click") & events["request_id"].notna()]
    ctr = (clicked.groupby("position").size() / shown).to_numpy()
    assert (np.diff(ctr) < 0).all(), ctr


def test_dwell_only_on_views_and_purchases_follow_clicks(run: tuple[Path, pd.DataFrame]) -> None:
    _, events = run
    views = events["event_type"] == "view"
    assert events.loc[views, "dwell_time_ms"].notna().all()
    assert events.loc[~views, "dwell_time_ms"].isna().all()
    clicks = events[events["event_type"] == "click"].groupby(["request_id", "position"])["event_ts"].min()
    buys = events[events["event_type"] == "purchase"].set_index(["request_id", "position"])["event_ts"]
    assert len(buys) > 0
    assert (buys > clicks.reindex(buys.index)).all()


def test_late_mobile_events_and_bots(run: tuple[Path, pd.DataFrame]) -> None:
    _, events = run
    lag = events["server_ts"] - events["event_ts"]
    late = lag > pd.Timedelta(hours=1)
    assert late.sum() > 0
    assert (events.loc[late, "device_type"] == "mobile").all()
    per_day = events.groupby(["user_id", events["event_ts"].dt.date]).size().groupby("user_id").max()
    bots = per_day[per_day > 1_000]
    assert len(bots) >= 1
    assert per_day.drop(bots.index).max() < 200


def test_double_clicks_are_distinct_events_seconds_apart(run: tuple[Path, pd.DataFrame]) -> None:
    _, events = run
    clicks = events[(events["event_type"] == "click") & events["request_id"].notna()]
    doubled = clicks[clicks.duplicated(["request_id", "position"], keep=False)]
    assert len(doubled) > 0
    spread = doubled.groupby(["request_id", "position"])["event_ts"].agg(lambda s: s.max() - s.min())
    assert (spread <= pd.Timedelta(seconds=2)).all()


def test_contracts_quarantine_nothing(run: tuple[Path, pd.DataFrame]) -> None:
    from data_contracts import validate_table

    out, events = run
    catalogue = to_pandas(pq.read_table(out / "items.parquet"))
    catalogue["categories"] = catalogue["categories"].map(list)  # Arrow lists come back as arrays
    items = validate_table("items", catalogue)
    users = validate_table("users", to_pandas(pq.read_table(out / "users.parquet")))
    sample = events.sample(5_000, random_state=0)
    result = validate_table(
        "interaction_events",
        sample,
        known_user_ids=set(users.clean["user_id"]),
        known_item_ids=set(items.clean["item_id"]),
    )
    assert (len(items.quarantine), len(users.quarantine), len(result.quarantine)) == (0, 0, 0)


def test_seeded_runs_are_identical_and_second_run_is_a_no_op(tmp_path: Path) -> None:
    config = SMALL.model_copy(update={"n_users": 500, "n_items": 200})
    first, second = run_simulate(config, tmp_path / "a"), run_simulate(config, tmp_path / "b")
    assert first.created and first.n_events == second.n_events
    assert read_events(tmp_path / "a").equals(read_events(tmp_path / "b"))
    assert not run_simulate(config, tmp_path / "a").created


def test_drift_changes_the_device_mix_after_its_date(tmp_path: Path) -> None:
    drift = DriftSwitch(at=DRIFT_AT, device_mix=(0.05, 0.05, 0.9), new_items=300)
    config = SMALL.model_copy(update={"n_users": 2_000, "bot_fraction": 0.0, "drift": drift})
    summary = run_simulate(config, tmp_path / "drift")
    assert summary.n_items == SMALL.n_items + 300
    events = to_pandas(read_events(tmp_path / "drift"))
    after = events["event_ts"] >= pd.Timestamp(DRIFT_AT)
    tv_after = (events.loc[after, "device_type"] == "tv").mean()
    tv_before = (events.loc[~after, "device_type"] == "tv").mean()
    assert tv_before < 0.2 < 0.8 < tv_after


def test_respond_clicks_more_on_more_relevant_items() -> None:
    world = World(SMALL)
    at = datetime(2024, 1, 5, tzinfo=UTC)
    items = [f"i{n}" for n in range(200)]
    rel = world.relevance("u3", items, at)
    best, worst = items[int(np.argmax(rel))], items[int(np.argmin(rel))]
    n = 2_000
    events = world.respond(["u3"] * n, [[best, worst]] * n, at, seed=1)
    clicks = events[events["event_type"] == "click"].drop_duplicates(["request_id", "position"])
    by_item = clicks["item_id"].value_counts()
    assert by_item.get(best, 0) > 2 * by_item.get(worst, 0)
    assert (events["event_type"] == "impression").sum() == 2 * n
    with pytest.raises(UnknownIdError):
        world.respond(["u999999"], [["i1"]], at)
