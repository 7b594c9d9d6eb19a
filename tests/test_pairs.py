"""Training pairs: positives, hard negatives (shown, not engaged), sampled negatives, rates, properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.ingest.leakage import LeakageError, check_point_in_time
from recsys.ingest.pairs import PairsConfig, build_pairs, corrected_probability, pairs_dir, write_pairs

T0 = datetime(2024, 1, 1, tzinfo=UTC)
ITEMS = [f"i{k}" for k in range(12)]


def catalogue() -> pd.DataFrame:
    return pd.DataFrame({"item_id": ITEMS, "duration_s": 100.0})


def log(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    """(user, item, event_type, minute) rows, one session per user."""
    ts = pd.Series([T0 + timedelta(minutes=m) for *_, m in rows]).astype("datetime64[us, UTC]")
    return pd.DataFrame(
        {
            "event_id": [f"e{k:04d}" for k in range(len(rows))],
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event_type": [r[2] for r in rows],
            "dwell_time_ms": pd.array([None] * len(rows), dtype="Int64"),
            "session_id": [f"{r[0]}-1" for r in rows],
            "event_ts": ts,
            "server_ts": ts,
        }
    )


def test_hand_made_log() -> None:
    # u1 was shown i1..i4, clicked i1; u2 was shown i5 and clicked it, and i6, skipped later.
    events = log(
        [
            ("u1", "i1", "impression", 0),
            ("u1", "i2", "impression", 0),
            ("u1", "i3", "impression", 0),
            ("u1", "i4", "impression", 0),
            ("u1", "i1", "click", 1),
            ("u2", "i5", "impression", 0),
            ("u2", "i5", "click", 2),
            ("u2", "i6", "skip", 3),
        ]
    )
    cfg = PairsConfig(negatives_per_positive=4, hard_share=0.5, sampler="uniform", seed=1)
    drawn = build_pairs(events, catalogue(), cfg)
    pairs = drawn.pairs
    positives = pairs[pairs["kind"] == "positive"]
    assert sorted(zip(positives["user_id"], positives["item_id"], strict=True)) == [
        ("u1", "i1"),
        ("u2", "i5"),
    ]
    hard = pairs[pairs["kind"] == "hard"]
    # Hard budget is floor(4 x 0.5) = 2 per positive: u1 has 3 shown-not-engaged, u2 has 1 skip.
    assert set(hard.loc[hard["user_id"] == "u1", "item_id"]) < {"i2", "i3", "i4"}
    assert len(hard[hard["user_id"] == "u1"]) == 2
    assert hard.loc[hard["user_id"] == "u2", "item_id"].tolist() == ["i6"]
    assert (hard["weight"] == 2.0).all() and (hard["label"] == 0).all()
    sampled = pairs[pairs["kind"] == "sampled"]
    assert len(sampled[sampled["user_id"] == "u1"]) == 2 and len(sampled[sampled["user_id"] == "u2"]) == 3
    assert not set(zip(sampled["user_id"], sampled["item_id"], strict=True)) & {("u1", "i1"), ("u2", "i5")}
    # Sampled negatives carry the time of their user's positive: u2's is the impression of i5 (minute
    # 0, positive since it was clicked later), which stands for the click of the same session.
    assert (sampled.loc[sampled["user_id"] == "u2", "event_ts"] == T0).all()
    assert drawn.stats == {
        "positives": 2,
        "hard_negatives_available": 4,
        "hard_negatives": 3,
        "sampled_negatives": 5,
        "hard_negative_rate": 0.75,
        "negatives_per_positive": 4.0,
    }


def test_popularity_sampler_prefers_popular_items() -> None:
    rows = [(f"u{k}", "i0", "like", k) for k in range(40)] + [("v", "i1", "like", 0)]
    cfg = PairsConfig(negatives_per_positive=50, hard_share=0.0, popularity_exponent=1.0)
    sampled = build_pairs(log(rows), catalogue(), cfg).pairs.query("kind == 'sampled' and user_id == 'v'")
    counts = sampled["item_id"].value_counts()
    # i0 has 41x the weight of an item without positives ((40 + 1) vs 1): it dominates v's negatives.
    assert counts.idxmax() == "i0" and counts["i0"] > 25


def test_corrected_probability_undoes_down_sampling() -> None:
    # 1,000 positives and 9,000 negatives: p = 0.1. Keeping 1 in 9 negatives trains to p = 0.5.
    assert corrected_probability(0.5, 1 / 9) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="negative_rate"):
        corrected_probability(0.5, 0.0)


def test_pairs_are_written_once_per_version_and_settings(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    drawn = build_pairs(log([("u1", "i1", "like", 0)]), catalogue(), PairsConfig())
    folder = pairs_dir(root, "v1", PairsConfig())
    assert folder.parent == root / "pairs" / "v1"
    assert pairs_dir(root, "v1", PairsConfig(negatives_per_positive=8)) != folder
    assert write_pairs(folder, drawn, {"dataset_version": "v1"})
    assert not write_pairs(folder, drawn, {"dataset_version": "v1"})
    assert len(pd.read_parquet(folder / "pairs.parquet")) == 5


event_rows = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", "u3"]),
        st.sampled_from(ITEMS),
        st.sampled_from(["impression", "click", "like", "skip", "purchase"]),
        st.integers(0, 30),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=30, deadline=None)
@given(rows=event_rows, k=st.integers(1, 6), share=st.floats(0, 1), seed=st.integers(0, 99))
def test_pair_properties(rows: list[tuple[str, str, str, int]], k: int, share: float, seed: int) -> None:
    events = log(rows)
    cfg = PairsConfig(negatives_per_positive=k, hard_share=share, seed=seed)
    drawn = build_pairs(events, catalogue(), cfg)
    pairs, stats = drawn.pairs, drawn.stats
    engaged = set(
        zip(pairs.loc[pairs["label"] == 1, "user_id"], pairs.loc[pairs["label"] == 1, "item_id"], strict=True)
    )
    negatives = pairs[pairs["label"] == 0]
    # No negative is an item its user engaged with.
    assert not set(zip(negatives["user_id"], negatives["item_id"], strict=True)) & engaged
    # Hard negatives are logged negatives of that user (shown and not engaged, or skipped).
    logged = set(zip(events["user_id"], events["item_id"], events["event_type"], strict=True))
    for user, item in zip(
        pairs.loc[pairs["kind"] == "hard", "user_id"],
        pairs.loc[pairs["kind"] == "hard", "item_id"],
        strict=True,
    ):
        assert (user, item, "impression") in logged or (user, item, "skip") in logged
    if pairs.empty:  # no positive, so nothing to pair
        assert stats["positives"] == 0
        return
    counts = pairs.groupby(["user_id", "kind"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=["positive", "hard", "sampled"], fill_value=0)
    counts = counts[counts["positive"] > 0]
    assert (counts["hard"] <= np.floor(counts["positive"] * k * share)).all()
    assert (counts["hard"] + counts["sampled"] <= counts["positive"] * k).all()
    # Where the user left at least half the catalogue alone, sampling always fills the quota.
    n_engaged = pd.Series([u for u, _ in engaged]).value_counts()
    roomy = counts[counts.index.map(lambda u: n_engaged.get(u, 0) <= len(ITEMS) // 2)]
    assert (roomy["hard"] + roomy["sampled"] == roomy["positive"] * k).all()
    assert 0 <= stats["hard_negative_rate"] <= 1
    assert stats["hard_negatives"] == (pairs["kind"] == "hard").sum()
    # Deterministic for a seed.
    assert build_pairs(events, catalogue(), cfg).pairs.equals(pairs)
    # Every pair is stamped no later than the events it was drawn from: usable for point-in-time joins.
    assert pairs["event_ts"].max() <= events["event_ts"].max()


def test_point_in_time_check() -> None:
    ts = pd.to_datetime(["2024-01-02", "2024-01-03"], utc=True)
    rows = pd.DataFrame({"event_timestamp": ts, "user_ts": [ts[0] - pd.Timedelta(1, "s"), None]})
    check_point_in_time(rows, ["user_ts"])
    rows["item_ts"] = [ts[0], ts[1] - pd.Timedelta(1, "h")]
    check_point_in_time(rows, ["user_ts", "item_ts"], cutoff=True)
    with pytest.raises(LeakageError, match="1 of 2 examples have item_ts not before event_timestamp"):
        check_point_in_time(rows, ["user_ts", "item_ts"])
    rows.loc[1, "item_ts"] = ts[1] + pd.Timedelta(1, "us")
    with pytest.raises(LeakageError, match="first: row 1"):
        check_point_in_time(rows, ["item_ts"], cutoff=True)
    with pytest.raises(LeakageError, match="no feature timestamp column 'x'"):
        check_point_in_time(rows, ["x"])
