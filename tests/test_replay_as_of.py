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
