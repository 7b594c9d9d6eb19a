"""The replay's retrieval searches only the index it is given for a window start, and no stale one after."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from evaluation.replay import AsOfRetrieval
from training.index import ItemIndex


class _Tower:
    """The parts of a retrieval model AsOfRetrieval uses: a catalogue and a user embedding."""

    catalog = ("a", "b", "c")
    version = "7"

    def embed_users(self, user_ids: list[str], features: pd.DataFrame) -> np.ndarray:
        return np.array([[1.0, 0.0]], dtype=np.float32)


def test_searches_the_given_index_and_refuses_outside_it() -> None:
    model = AsOfRetrieval(_Tower(), {"u": {"a"}})
    early = ItemIndex.build(np.array([[1.0, 0], [0.9, 0], [0.1, 0]]), np.arange(3))
    late = ItemIndex.build(np.array([[1.0, 0], [0.1, 0], [0.9, 0]]), np.arange(3))
    with model.as_of(early):
        ids, scores = model.retrieve("u", {}, 2)
    assert ids == ["b", "c"]  # "a" was in the user's history
    np.testing.assert_allclose(scores, [0.9, 0.1], rtol=1e-6)
    with model.as_of(late):
        assert model.retrieve("u", {}, 2)[0] == ["c", "b"]
    with pytest.raises(RuntimeError, match="as_of"):
        model.retrieve("u", {}, 2)
    assert model.version == "7"


class _HistoryTower(_Tower):
    """A user tower that reads recent items: its embedding says how many it was given."""

    history_length = 5

    def embed_users(
        self, user_ids: list[str], features: pd.DataFrame, histories: list[list[str]] | None = None
    ) -> np.ndarray:
        assert histories is not None, "the replay must never fall back to the model's stored history"
        return np.array([[float(len(h)), 1.0] for h in histories], dtype=np.float32)


def test_a_history_reading_tower_gets_the_history_before_the_window() -> None:
    model = AsOfRetrieval(_HistoryTower(), {"u": set()}, {"u": ["a", "b"]})
    assert model.embed_users(["u", "stranger"], pd.DataFrame([{}, {}])).tolist() == [[2.0, 1.0], [0.0, 1.0]]
    assert model.embed_users(["u"], pd.DataFrame([{}]), [["c"]]).tolist() == [[1.0, 1.0]]


class _PopularTower(_Tower):
    """A tower that knows only user "u" and whose stored popularity list counts the judged window too."""

    def knows_user(self, user_id: str) -> bool:
        return user_id == "u"

    def popular(self, n: int) -> tuple[list[str], np.ndarray]:
        return ["c", "b", "a"][:n], np.array([9.0, 5.0, 1.0], dtype=np.float32)[:n]


def test_the_cold_start_fallback_counts_only_the_history_before_the_window() -> None:
    from serving.stages import UNKNOWN_USER, RetrievalStage
    from training.examples import popularity

    history_events = pd.DataFrame(
        {
            "user_id": ["u", "v", "v"],
            "item_id": ["a", "a", "b"],
            "event_type": ["like", "like", "like"],
        }
    )
    model = AsOfRetrieval(_PopularTower(), {"u": {"a"}}, popularity=popularity(history_events))
    answer = RetrievalStage(model, lambda service, rows: pd.DataFrame(rows)).candidates("stranger", 10, 2)
    assert answer.fallback_reason == UNKNOWN_USER
    assert answer.item_ids == ["a", "b"]  # "c" is popular only in the window, which the history lacks
    assert answer.scores == [2.0, 1.0]
    # Without a history popularity it is the model's stored list, as live serving uses.
    assert AsOfRetrieval(_PopularTower(), {}).popular(2)[0] == ["c", "b"]
