"""The ingress's pure parts without Ray or HTTP: cache, sessions, event validation and log, experiments,
exploration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.experiments.assignment import Experiment, Variant, assign, save_experiments
from serving.cache import PredictionCache
from serving.events import EventBatchError, EventLog, events_frame, parse_events
from serving.experiments import ExperimentWatcher, assign_all
from serving.exploration import ExplorationConfig, explore
from serving.session import SessionStore, blend_affinity, session_match, session_profile

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def event(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "event_id": "e1",
        "user_id": "u1",
        "item_id": "i10",
        "event_type": "view",
        "dwell_time_ms": 5000,
        "surface": "homepage",
        "session_id": "s1",
        "device_type": "tv",
        "position": 2,
        "request_id": "r1",
        "event_ts": "2026-03-01T12:00:00+01:00",
    }
    body.update(overrides)
    return body


def batch(*events: object) -> bytes:
    return json.dumps({"events": list(events)}).encode()


# --- prediction cache -------------------------------------------------------------------------------


def test_cache_hits_within_ttl_and_misses_after() -> None:
    clock = Clock()
    cache = PredictionCache[str](ttl_s=30, max_entries=10, clock=clock)
    cache.put("u1", ("homepage", "tv"), "A")
    clock.now += 29.9
    assert cache.get("u1", ("homepage", "tv")) == "A"
    assert cache.get("u1", ("homepage", "mobile")) is None  # device is part of the key
    clock.now += 0.2
    assert cache.get("u1", ("homepage", "tv")) is None
    assert (cache.hits, cache.misses) == (1, 2)
    assert len(cache) == 0  # expired entries are dropped when found


def test_cache_invalidates_one_user_and_evicts_least_recently_used() -> None:
    cache = PredictionCache[str](ttl_s=30, max_entries=3, clock=Clock())
    cache.put("u1", "a", "1a")
    cache.put("u1", "b", "1b")
    cache.put("u2", "a", "2a")
    assert cache.invalidate_user("u1") == 2
    assert cache.get("u1", "a") is None and cache.get("u2", "a") == "2a"
    for n in range(3):
        cache.put(f"v{n}", "a", str(n))
    assert cache.get("u2", "a") is None  # the oldest entry went first
    assert len(cache) == 3


# --- sessions ---------------------------------------------------------------------------------------


def test_session_keeps_the_last_items_once_each_and_forgets_after_ttl() -> None:
    clock = Clock()
    store = SessionStore(max_items=3, ttl_s=60, max_users=2, clock=clock)
    store.record("u", ["a", "b", "a", "c", "d"])
    assert store.items("u") == ["a", "c", "d"]
    clock.now += 30
    store.record("u", ["e"])
    clock.now += 31  # a, c, d are 61 s old, e is 31 s old
    assert store.items("u") == ["e"]
    store.record("v", ["x"])
    store.record("w", ["y"])
    assert store.items("u") == []  # three users, room for two


def test_session_profile_blend_and_match_by_hand() -> None:
    profile = session_profile(np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 1.0]]))
    assert profile is not None
    np.testing.assert_allclose(profile, [0.0, 2 / 3, 1 / 3])
    assert session_profile(np.zeros((2, 3))) is None
    blended = blend_affinity([0.8, 0.2, 0.0], profile, weight=0.5)
    np.testing.assert_allclose(blended, [0.4, 0.1 + 1 / 3, 1 / 6])
    np.testing.assert_allclose(blend_affinity([2.0, 0.0, 0.0], profile, 0.0), [1.0, 0.0, 0.0])
    match = session_match(np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]), profile)
    np.testing.assert_allclose(match, [2 / 3, 1 / 6, 0.0])
    with pytest.raises(ValueError, match="weight"):
        blend_affinity(None, profile, 1.5)


# --- events -----------------------------------------------------------------------------------------


def test_valid_events_are_parsed_with_utc_times() -> None:
    parsed = parse_events(batch(event(), event(event_id="e2", event_type="like", dwell_time_ms=None)), 10)
    assert [e.event_id for e in parsed.accepted] == ["e1", "e2"] and not parsed.rejected
    assert parsed.accepted[0].event_ts == datetime(2026, 3, 1, 11, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (event(event_type="watch"), "event_type: Value error, must be one of impression, click"),
        (event(user_id=7), "user_id: Input should be a valid string"),
        (event(user_id=""), "user_id: String should have at least 1 character"),
        (event(event_ts="2026-03-01T12:00:00"), "event_ts: Value error, must carry a time zone"),
        (event(event_ts=1767225600), "event_ts: Value error, must be an ISO 8601 string"),
        (event(event_ts="2999-01-01T00:00:00Z"), "event_ts: is in the future"),
        (event(position=0), "position: Input should be greater than or equal to 1"),
        (event(position=True), "position: Input should be a valid integer"),
        (event(event_type="click"), "dwell_time_ms: only view events carry a dwell time"),
        (event(surface="billboard"), "surface: Value error, must be one of homepage"),
        (event(colour="red"), "colour: Extra inputs are not permitted"),
        ({k: v for k, v in event().items() if k != "session_id"}, "session_id: Field required"),
        ("not an object", "event: must be an object"),
    ],
)
def test_each_bad_event_is_rejected_with_a_reason_and_good_ones_kept(bad: object, error: str) -> None:
    parsed = parse_events(batch(event(), bad, event(event_id="e3")), 10)
    assert [e.event_id for e in parsed.accepted] == ["e1", "e3"]
    assert [r.index for r in parsed.rejected] == [1]
    assert parsed.rejected[0].error.startswith(error), parsed.rejected[0].error


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"{not json", "body: invalid JSON"),
        (b"\xff\xfe", "body: invalid JSON"),
        (b"[]", 'body: must be an object {"events": [...]}'),
        (b'{"events": {}}', 'body: must be an object {"events": [...]}'),
        (b'{"events": [], "more": 1}', 'body: must be an object {"events": [...]}'),
        (b'{"events": []}', "events: the batch is empty"),
        (batch(*[event(event_id=str(n)) for n in range(4)]), "events: at most 3 per batch, got 4"),
    ],
)
def test_unusable_bodies_raise_one_readable_error(raw: bytes, error: str) -> None:
    with pytest.raises(EventBatchError) as err:
        parse_events(raw, max_events=3)
    assert str(err.value).startswith(error)


def test_event_log_writes_date_partitions_that_read_back_exactly(tmp_path: Path) -> None:
    parsed = parse_events(
        batch(event(), event(event_id="e2", event_ts="2026-03-02T00:30:00Z", dwell_time_ms=None)), 10
    )
    server_ts = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
    log = EventLog(tmp_path / "events")
    files = log.append(events_frame(parsed.accepted, server_ts, [0.25, None]))
    assert [f.parent.name for f in files] == ["event_date=2026-03-01", "event_date=2026-03-02"]
    assert not list((tmp_path / "events").rglob(".*.tmp"))  # no temporary file left behind
    back = log.read().sort_values("event_id").reset_index(drop=True)
    assert back["event_id"].tolist() == ["e1", "e2"]
    assert back["event_ts"].tolist() == [
        pd.Timestamp("2026-03-01T11:00:00Z"),
        pd.Timestamp("2026-03-02T00:30:00Z"),
    ]
    assert back["server_ts"].nunique() == 1 and back["server_ts"][0] == pd.Timestamp(server_ts)
    assert back["dwell_time_ms"][0] == 5000 and pd.isna(back["dwell_time_ms"][1])
    assert back["position"].tolist() == [2, 2]
    assert back["propensity"][0] == 0.25 and pd.isna(back["propensity"][1])
    log.append(events_frame(parsed.accepted[:1], server_ts))
    assert len(log.read()) == 3  # appends, never overwrites
    assert os.listdir(tmp_path / "events" / "event_date=2026-03-01").__len__() == 2


# --- experiments ------------------------------------------------------------------------------------


def two_experiments() -> dict[str, Experiment]:
    ranker = Experiment(
        "ranker", [Variant("control", "champion", 0.5), Variant("treatment", "challenger", 0.5)]
    )
    layout = Experiment("layout", [Variant("a", "champion", 0.5), Variant("b", "champion", 0.5)])
    return {"ranker": ranker, "layout": layout}


def test_assignments_are_deterministic_per_layer_and_name_the_model() -> None:
    experiments = two_experiments()
    users = [f"user-{n}" for n in range(2000)]
    got = [assign_all(u, experiments) for u in users]
    assert got == [assign_all(u, experiments) for u in users]
    for user, assignment in zip(users, got, strict=True):
        assert assignment.variants == {name: assign(user, e) for name, e in experiments.items()}
        expected = "challenger" if assignment.variants["ranker"] == "treatment" else "champion"
        assert assignment.model == expected
    # Separate layers: the layout split is independent of the ranker split (each cell near a quarter).
    cells = pd.Series([(a.variants["ranker"], a.variants["layout"]) for a in got]).value_counts(
        normalize=True
    )
    assert len(cells) == 4 and cells.between(0.2, 0.3).all()
    assert assign_all("x", {}).label == "control"


def test_watcher_rereads_a_changed_file_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "experiments.json"
    clock = Clock()
    watcher = ExperimentWatcher(path, check_every_s=1.0, clock=clock)
    assert watcher.current() == {}
    save_experiments(path, two_experiments())
    clock.now += 0.5
    assert watcher.current() == {}  # not checked again yet
    clock.now += 0.6
    assert set(watcher.current()) == {"ranker", "layout"}
    assert watcher.models() == {"challenger"}
    path.write_text("{broken")
    clock.now += 1.1
    assert set(watcher.current()) == {"ranker", "layout"} and watcher.error  # keeps the last good file
    path.unlink()
    clock.now += 1.1
    assert watcher.current() == {} and watcher.error is None


# --- exploration ------------------------------------------------------------------------------------


def test_exploration_off_keeps_the_ranked_list_with_propensity_one() -> None:
    ids, scores, p = explore(
        ["a", "b", "c"], [3.0, 2.0, 1.0], 5, ExplorationConfig(), np.random.default_rng(0)
    )
    assert (ids, scores, p) == (["a", "b", "c"], [3.0, 2.0, 1.0], [1.0, 1.0, 1.0])


def test_epsilon_propensities_match_the_policy_and_the_observed_frequencies() -> None:
    config = ExplorationConfig(policy="epsilon", epsilon=0.3, pool=4)
    items, scores = ["a", "b", "c", "d"], [4.0, 3.0, 2.0, 1.0]
    rng = np.random.default_rng(1)
    first = [explore(items, scores, 2, config, rng) for _ in range(4000)]
    share_a = sum(ids[0] == "a" for ids, _, _ in first) / len(first)
    assert abs(share_a - (0.7 + 0.3 / 4)) < 0.02
    for ids, _, p in first:
        assert p[0] == pytest.approx(0.775 if ids[0] == "a" else 0.075)
        best_left = next(i for i in items if i != ids[0])
        assert p[1] == pytest.approx(0.7 + 0.1 if ids[1] == best_left else 0.1)
        assert len(set(ids)) == 2


def test_softmax_propensities_sum_to_one_over_the_first_slot() -> None:
    config = ExplorationConfig(policy="softmax", temperature=0.5, pool=3)
    items, scores = ["a", "b", "c"], [3.0, 2.0, 1.0]
    rng = np.random.default_rng(2)
    seen: dict[str, float] = {}
    for _ in range(300):
        ids, _, p = explore(items, scores, 1, config, rng)
        seen[ids[0]] = p[0]
    assert set(seen) == {"a", "b", "c"}
    assert sum(seen.values()) == pytest.approx(1.0)
    assert seen["a"] > seen["b"] > seen["c"]


def test_serving_metrics_of_two_apps_never_share_counts(tmp_path: Path) -> None:
    # Importing Feast sets PROMETHEUS_MULTIPROC_DIR; when prometheus_client is imported after that,
    # its metrics keep values in one file per process, so a fresh instance used to inherit old counts.
    # A fresh interpreter with the variable set reproduces that whatever this process imported first.
    script = """
from serving.metrics import ServingMetrics
first = ServingMetrics()
first.cache_hits.labels(cache="prediction").inc(3)
first.batch_size.observe(4)
second = ServingMetrics()
second.cache_hits.labels(cache="prediction").inc()
print(second.render().decode(), first.render().decode(), sep="-- first --")
"""
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROCESS_DIR": str(tmp_path),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    second, first = done.stdout.split("-- first --")
    assert 'recsys_cache_hits_total{cache="prediction"} 1.0' in second
    assert "recsys_ranking_batch_size_count 0.0" in second
    assert 'recsys_cache_hits_total{cache="prediction"} 3.0' in first
    assert "recsys_ranking_batch_size_count 1.0" in first
