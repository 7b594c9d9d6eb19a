"""The pure parts of the evaluation stage: baseline lists, ordering, averaging over users, the output
folder of each split method and the text table of slices."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from evaluation.evaluate import (
    evaluation_dir,
    mean_metrics,
    output_dir,
    popularity_rankings,
    rankings_by_user,
    render_slices_text,
    slice_columns,
)
from evaluation.split import SplitError, split_dir
from recsys.state import StateDir


def test_popularity_rankings_skip_seen_items() -> None:
    ranked = popularity_rankings(["a", "b", "c", "d"], ["u1", "u2"], {"u1": {"a", "c"}}, 2)
    assert ranked == {"u1": ["b", "d"], "u2": ["a", "b"]}


def test_rankings_by_user_sort_by_score_with_stable_ties() -> None:
    frame = pd.DataFrame(
        {"user_id": ["u1", "u1", "u1", "u2"], "item_id": ["x", "y", "z", "w"], "s": [0.1, 0.5, 0.5, 1.0]}
    )
    assert rankings_by_user(frame, "s") == {"u1": ["y", "z", "x"], "u2": ["w"]}


def test_mean_metrics_average_over_users_with_relevant_items() -> None:
    rankings = {"u1": ["a", "b"], "u2": ["c", "d"]}
    relevant = {"u1": {"a"}, "u2": {"d", "e"}, "u3": {"a"}}  # u3 has no ranking: scores 0
    metrics = mean_metrics(rankings, relevant, [1, 2])
    assert metrics["recall@1"] == pytest.approx((1 + 0 + 0) / 3)
    assert metrics["recall@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    u2_ndcg2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert metrics["ndcg@2"] == pytest.approx((1 + u2_ndcg2 + 0) / 3)


def test_each_split_method_evaluates_into_its_own_folder(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    per_user = tmp_path / "evaluation" / "v1"
    # The per-user path is the one README and docs name; the global split gets a folder below it, as
    # its split does below splits/<version>/.
    assert evaluation_dir(state, "v1") == per_user == state.evaluation("v1")
    assert evaluation_dir(state, "v1", "per_user") == per_user
    assert evaluation_dir(state, "v1", "global") == per_user / "global"
    assert split_dir(state, "v1", "global").name == evaluation_dir(state, "v1", "global").name
    assert output_dir(state, "v1", "test", "champion") == per_user
    assert output_dir(state, "v1", "test", "champion", "global") == per_user / "global"
    assert output_dir(state, "v1", "validation", "challenger") == per_user / "validation-challenger"
    assert output_dir(state, "v1", "validation", "challenger", "global") == (
        per_user / "global" / "validation-challenger"
    )
    assert output_dir(state, "v1", "test", "3", "global") == per_user / "global" / "test-3"
    with pytest.raises(SplitError, match="unknown split 'random'"):
        evaluation_dir(state, "v1", "random")


def test_slice_columns_prefer_10_and_100_and_fall_back_to_the_configured_ks() -> None:
    assert slice_columns([10, 50, 100]) == ["ndcg@10", "recall@10", "recall@100"]
    assert slice_columns([10, 50]) == ["ndcg@10", "recall@10", "recall@50"]
    assert slice_columns([5, 20, 100]) == ["ndcg@5", "recall@5", "recall@100"]
    assert slice_columns([20]) == ["ndcg@20", "recall@20"]


def test_slice_text_has_a_block_per_slice_and_one_line_for_an_empty_slice() -> None:
    document = {
        "split": "test",
        "ks": [10, 50, 100],
        "slices": {
            "cold_start": {
                "n_users": 12,
                "models": {
                    "popularity": {"ndcg@10": 0.01234, "recall@10": 0.05, "recall@100": 0.25},
                    "retrieval+ranking": {"ndcg@10": 0.1, "recall@10": 0.123456},
                },
            },
            "power": {"n_users": 0, "models": {}},
            "new_items": {
                "n_users": 1,
                "models": {"item-knn": {"ndcg@10": 0.0, "recall@10": 0.0, "recall@100": 1.0}},
            },
        },
    }
    assert render_slices_text(document).splitlines() == [
        "Slices of the test window",
        "cold_start: 12 users",
        "  system             NDCG@10  Recall@10  Recall@100",
        "  popularity          0.0123     0.0500      0.2500",
        "  retrieval+ranking   0.1000     0.1235           -",
        "power: 0 users, no metrics",
        "new_items: 1 user",
        "  system             NDCG@10  Recall@10  Recall@100",
        "  item-knn            0.0000     0.0000      1.0000",
    ]
    assert render_slices_text({"split": "test", "ks": [10], "slices": {}}) == ""
