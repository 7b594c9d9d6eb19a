"""FAISS item index: exact and IVF search, exclusions, adding items, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recsys.config import IndexConfig
from training.index import ItemIndex, ItemIndexError, gpu_count


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


def _clustered(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    points = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim))
    unit: np.ndarray = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    return unit


def _top(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    order: np.ndarray = np.argsort(-(queries @ embeddings.T), axis=1, kind="stable")
    return order[:, :k]


def test_catalogue_size_chooses_exact_or_ivf() -> None:
    embeddings = _clustered(4_000)
    assert ItemIndex.build(embeddings, np.arange(4_000), IndexConfig(exact_below=5_000)).kind == "flat"
    ivf = ItemIndex.build(embeddings, np.arange(4_000), IndexConfig(exact_below=1_000, nlist=40, nprobe=8))
    assert ivf.kind == "ivf" and ivf.describe()["nlist"] == 40 and ivf.describe()["nprobe"] == 8
    queries = _clustered(50, seed=1)
    found, _ = ivf.search(queries, 20)
    exact = _top(embeddings, queries, 20)
    recall = np.mean([len(set(f) & set(e)) / 20 for f, e in zip(found, exact, strict=True)])
    assert recall > 0.9
    # Probing every list is exhaustive: the same items as exact search.
    full = ItemIndex.build(embeddings, np.arange(4_000), IndexConfig(exact_below=1_000, nlist=40, nprobe=40))
    assert np.array_equal(np.sort(full.search(queries, 20)[0], axis=1), np.sort(exact, axis=1))


@pytest.mark.parametrize("exact_below", [100_000, 1_000])
def test_new_items_are_added_without_a_rebuild(exact_below: int) -> None:
    embeddings = _clustered(2_000)
    index = ItemIndex.build(embeddings, np.arange(2_000), IndexConfig(exact_below=exact_below, nlist=20))
    newcomer = np.zeros((1, 16), dtype=np.float32)
    newcomer[0, 0] = 1.0
    index.add(newcomer, np.array([5_000]))
    assert len(index) == 2_001
    ids, scores = index.search(newcomer * 10, 1)  # the newcomer is the best match for its own direction
    assert ids.tolist() == [[5_000]] and scores[0, 0] == pytest.approx(10.0)
    with pytest.raises(ItemIndexError, match="already indexed"):
        index.add(newcomer, np.array([5_000]))
    with pytest.raises(ItemIndexError, match="dimensions"):
        index.add(np.zeros((1, 3)), np.array([6_000]))


def test_ivf_settings_survive_save_and_load(tmp_path: Path) -> None:
    embeddings = _clustered(2_000)
    built = ItemIndex.build(embeddings, np.arange(2_000), IndexConfig(exact_below=1_000, nlist=20, nprobe=5))
    built.save(tmp_path / "idx")
    loaded = ItemIndex.load(tmp_path / "idx")
    assert loaded.describe() == built.describe()
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["kind"] == "ivf"
    queries = _clustered(5, seed=2)
    assert np.array_equal(loaded.search(queries, 10)[0], built.search(queries, 10)[0])


def test_unreadable_index_and_missing_gpu_are_clear_errors(tmp_path: Path) -> None:
    _index().save(tmp_path / "idx")
    (tmp_path / "idx" / "items.faiss").write_bytes(b"not an index")
    with pytest.raises(ItemIndexError, match="cannot read"):
        ItemIndex.load(tmp_path / "idx")
    if gpu_count() == 0:
        with pytest.raises(ItemIndexError, match="no GPU"):
            _index().use_gpu("yes")
