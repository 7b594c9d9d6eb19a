"""FAISS exact inner-product index: results, exclusions, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.index import ItemIndex, ItemIndexError


def _index() -> ItemIndex:
    embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    return ItemIndex.build(embeddings, np.array([10, 11, 12, 13]))


def test_search_returns_ids_by_inner_product() -> None:
    ids, scores = _index().search(np.array([[1.0, 0.0], [0.0, 1.0]]), 2)
    assert ids.tolist() == [[10, 11], [12, 11]]
    np.testing.assert_allclose(scores, [[1.0, 0.8], [1.0, 0.6]], rtol=1e-6)


def test_search_skips_excluded_ids_per_query() -> None:
    ids, scores = _index().search(np.array([[1.0, 0.0], [1.0, 0.0]]), 2, exclude=[{10, 11}, set()])
    assert ids.tolist() == [[12, 13], [10, 11]]
    assert scores[0].tolist() == pytest.approx([0.0, -1.0])


def test_search_pads_when_too_few_items_remain() -> None:
    ids, scores = _index().search(np.array([[1.0, 0.0]]), 3, exclude=[{10, 11}])
    assert ids.tolist() == [[12, 13, -1]]
    assert np.isneginf(scores[0, 2])


def test_bad_inputs_raise_readable_errors() -> None:
    with pytest.raises(ItemIndexError, match="line up"):
        ItemIndex.build(np.zeros((3, 2)), np.arange(2))
    with pytest.raises(ItemIndexError, match="NaN"):
        ItemIndex.build(np.full((1, 2), np.nan), np.arange(1))
    with pytest.raises(ItemIndexError, match="shape"):
        _index().search(np.zeros((1, 3)), 1)
    with pytest.raises(ItemIndexError, match="exclude"):
        _index().search(np.zeros((2, 2)), 1, exclude=[set()])


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    _index().save(tmp_path / "idx")
    loaded = ItemIndex.load(tmp_path / "idx")
    assert len(loaded) == 4 and loaded.dim == 2
    ids, _ = loaded.search(np.array([[0.0, 1.0]]), 1)
    assert ids.tolist() == [[12]]
