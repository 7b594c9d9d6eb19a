"""Pure training-data preparation: positives, vocabularies, labels, popularity, snapshot flooring."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from training.candidates import floor_to_snapshots, sorted_by_user
from training.examples import (
    candidate_labels,
    history_at_cut,
    items_by_user,
    lookup,
    popularity,
    positives,
    recent_positive_items,
    vocabulary,
    window_starts,
)

EVENTS = pd.DataFrame(
    {
        "user_id": ["1", "1", "2", "2", "3"],
        "item_id": ["a", "b", "a", "c", "a"],
        "event_type": ["like", "skip", "like", "purchase", "view"],
        "event_ts": pd.to_datetime(
            ["2000-01-05", "2000-01-02", "2000-03-01", "2000-02-01", "2000-01-01"], utc=True
        ),
    }
)


def test_positives_vocabulary_and_lookup() -> None:
    pos = positives(EVENTS)
    assert pos["event_type"].tolist() == ["like", "like", "purchase"]
    vocab = vocabulary(pos["item_id"])
    assert vocab == ["a", "c"]
    assert lookup(pd.Series(["c", "a", "zzz"]), vocab).tolist() == [2, 1, 0]


def test_window_starts_and_items_by_user() -> None:
    starts = window_starts(EVENTS)
    assert starts["user_id"].tolist() == ["1", "2", "3"]
    assert starts["event_timestamp"].tolist() == list(
        pd.to_datetime(["2000-01-02", "2000-02-01", "2000-01-01"], utc=True)
    )
    assert items_by_user(EVENTS) == {"1": {"a", "b"}, "2": {"a", "c"}, "3": {"a"}}


def test_candidate_labels_and_popularity() -> None:
    candidates = pd.DataFrame({"user_id": ["1", "1", "2"], "item_id": ["a", "z", "a"]})
    labels = candidate_labels(candidates, {"1": {"a"}})
    assert labels.tolist() == [1.0, 0.0, 0.0]
    assert popularity(EVENTS) == [("a", 2.0), ("c", 1.0)]


def test_floor_to_snapshots_moves_back_to_the_grid() -> None:
    grid = [datetime(2000, 1, 11, tzinfo=UTC), datetime(2000, 1, 21, tzinfo=UTC)]
    times = pd.Series(pd.to_datetime(["2000-01-15", "2000-01-21", "2000-01-05", "2000-02-01"], utc=True))
    floored = floor_to_snapshots(times, grid)
    expected = pd.to_datetime(["2000-01-11", "2000-01-21", "2000-01-05", "2000-01-21"], utc=True)
    assert floored.tolist() == list(expected)
    assert (floored <= times).all()


def test_sorted_by_user_keeps_first_appearance_order() -> None:
    frame = pd.DataFrame({"user_id": ["b", "a", "b", "a"], "item_id": ["1", "2", "3", "4"]})
    assert sorted_by_user(frame)["item_id"].tolist() == ["1", "3", "2", "4"]
    assert np.array_equal(sorted_by_user(frame)["user_id"].to_numpy(), np.array(["b", "b", "a", "a"]))


HISTORY_EVENTS = pd.DataFrame(
    {
        "user_id": ["1", "1", "1", "1", "1", "2", "1"],
        "item_id": ["a", "b", "c", "d", "e", "a", "f"],
        "event_type": ["like", "purchase", "view", "save", "like", "like", "like"],
        "event_ts": pd.to_datetime(
            [
                "2000-01-03",
                "2000-01-01",
                "2000-01-02",  # a view: never history
                "2000-01-04",
                "2000-01-04",  # same instant as d: order of the log decides
                "2000-01-01",
                "2000-01-09",
            ],
            utc=True,
        ),
    }
)


def test_recent_positive_items_are_strictly_before_each_row() -> None:
    at = pd.DataFrame(
        {
            "user_id": ["1", "1", "1", "1", "2", "3"],
            "event_timestamp": pd.to_datetime(
                [
                    "2000-01-04 00:00:00",
                    "2000-01-05 00:00:00",
                    "2000-01-01 00:00:00",
                    "2000-02-01 00:00:00",
                    "2000-01-01 00:00:01",
                    "2000-05-01 00:00:00",
                ],
                utc=True,
            ),
        }
    )
    found = recent_positive_items(HISTORY_EVENTS, at, 3)
    assert found == [
        ["b", "a"],  # d and e happen at that very instant: not before it
        ["a", "d", "e"],  # the newest 3 of b, a, d, e, oldest first
        [],  # b happens at that instant
        ["d", "e", "f"],
        ["a"],
        [],  # a user without positives
    ]
    assert recent_positive_items(HISTORY_EVENTS, at, 0) == [[]] * 6


def test_history_at_cut_takes_everything_in_the_frame() -> None:
    assert history_at_cut(HISTORY_EVENTS, ["1", "2", "9"], 2) == {"1": ["e", "f"], "2": ["a"], "9": []}
    assert history_at_cut(HISTORY_EVENTS.iloc[:0], ["1"], 2) == {"1": []}


def test_recent_positive_items_match_a_row_by_row_reading() -> None:
    """Random logs with ties and users without rows or events, against the definition read literally."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        n_events = int(rng.integers(0, 60))
        events = pd.DataFrame(
            {
                "user_id": rng.choice(["u1", "u2", "u3"], n_events),
                "item_id": [f"i{k}" for k in rng.integers(0, 9, n_events)],
                "event_type": rng.choice(["like", "view", "save"], n_events),
                "event_ts": pd.to_datetime(rng.integers(0, 8, n_events), unit="D", utc=True),
            }
        )
        at = pd.DataFrame(
            {
                "user_id": rng.choice(["u1", "u2", "u4"], 15),
                "event_timestamp": pd.to_datetime(rng.integers(0, 9, 15), unit="D", utc=True),
            }
        )
        liked = events[events["event_type"].isin(["like", "save"])]
        liked = liked.iloc[np.argsort(liked["event_ts"].to_numpy(), kind="stable")]
        expected = [
            liked[(liked["user_id"] == u) & (liked["event_ts"] < t)]["item_id"].tolist()[-4:]
            for u, t in zip(at["user_id"], at["event_timestamp"], strict=True)
        ]
        assert recent_positive_items(events, at, 4) == expected
