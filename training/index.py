"""Exact inner-product search over item embeddings (FAISS), with per-query exclusions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

INDEX_FILE = "items.faiss"
IDS_FILE = "item_ids.npy"


class ItemIndexError(ValueError):
    """Embeddings or queries that do not fit the index."""


class ItemIndex:
    """A FAISS IndexFlatIP over item embeddings; ids are the caller's int64 item numbers.

    Exact search is the right default at catalogue sizes up to ~1M on CPU; the ids array keeps the
    mapping from FAISS rows to item numbers outside FAISS so it stays inspectable.
    """

    def __init__(self, index: Any, ids: np.ndarray) -> None:
        self._index = index
        self.ids = np.asarray(ids, dtype=np.int64)

    @classmethod
    def build(cls, embeddings: np.ndarray, ids: np.ndarray) -> ItemIndex:
        """Index (n, dim) embeddings whose row i is item ids[i]."""
        import faiss

        matrix = np.ascontiguousarray(embeddings, dtype=np.float32)
        if matrix.ndim != 2 or len(matrix) != len(ids):
            raise ItemIndexError(f"embeddings {matrix.shape} and ids ({len(ids)},) do not line up")
        if not np.isfinite(matrix).all():
            raise ItemIndexError("item embeddings contain NaN or infinite values")
        index = faiss.IndexFlatIP(matrix.shape[1])
        index.add(matrix)
        return cls(index, ids)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def __len__(self) -> int:
        return len(self.ids)

    def search(
        self, queries: np.ndarray, n: int, exclude: list[set[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-n items per query by inner product, skipping each query's excluded ids.

        Args:
            queries: (q, dim) query embeddings.
            n: results per query; fewer when the catalogue minus exclusions is smaller (padded with
                id -1 and score -inf).
            exclude: one set of item ids per query, never returned for that query.

        Returns:
            ids (q, n) int64 and scores (q, n) float32, best first.
        """
        matrix = np.ascontiguousarray(queries, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise ItemIndexError(f"queries must have shape (q, {self.dim}), got {matrix.shape}")
        if exclude is not None and len(exclude) != len(matrix):
            raise ItemIndexError(f"exclude has {len(exclude)} sets for {len(matrix)} queries")
        if n < 1:
            raise ItemIndexError(f"n must be at least 1, got {n}")
        extra = max((len(s) for s in exclude), default=0) if exclude else 0
        fetch = min(n + extra, len(self.ids))
        scores, rows = self._index.search(matrix, fetch)
        out_ids = np.full((len(matrix), n), -1, dtype=np.int64)
        out_scores = np.full((len(matrix), n), -np.inf, dtype=np.float32)
        for q in range(len(matrix)):
            valid = rows[q] >= 0
            ids, sc = self.ids[rows[q][valid]], scores[q][valid]
            if exclude:
                keep = np.fromiter((i not in exclude[q] for i in ids), dtype=bool, count=len(ids))
                ids, sc = ids[keep], sc[keep]
            out_ids[q, : min(n, len(ids))] = ids[:n]
            out_scores[q, : min(n, len(ids))] = sc[:n]
        return out_ids, out_scores

    def save(self, directory: Path) -> None:
        import faiss

        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(directory / INDEX_FILE))
        np.save(directory / IDS_FILE, self.ids)

    @classmethod
    def load(cls, directory: Path) -> ItemIndex:
        import faiss

        if not (directory / INDEX_FILE).exists():
            raise FileNotFoundError(f"no FAISS index at {directory / INDEX_FILE}")
        return cls(faiss.read_index(str(directory / INDEX_FILE)), np.load(directory / IDS_FILE))
