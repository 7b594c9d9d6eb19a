"""Inner-product search over item embeddings (FAISS): exact for small catalogues, IVF for large ones.

The kind is chosen by catalogue size (`two_tower.index` in the config): below `exact_below` items an exact
`IndexFlatIP`; at or above it an `IndexIVFFlat` whose coarse quantiser is trained on a sample, searched
over `nprobe` lists. Either kind takes new items with `add`, without a rebuild (IVF assigns them to the
trained lists). Saved beside the model: the FAISS file, the row -> item number mapping and `index.json`
(kind, lists, probes, FAISS version), so that a loaded index says what it is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from recsys.config import IndexConfig

INDEX_FILE = "items.faiss"
IDS_FILE = "item_ids.npy"
META_FILE = "index.json"
# FAISS's GPU indexes answer at most this many neighbours per query; larger asks go to the CPU copy.
GPU_MAX_K = 2048


class ItemIndexError(ValueError):
    """Embeddings or queries that do not fit the index, or an index that cannot be loaded."""


def gpu_count() -> int:
    """GPUs FAISS can use: 0 with the CPU-only wheel, which lacks the GPU functions or reports none."""
    import faiss

    counter = getattr(faiss, "get_num_gpus", None)
    return int(counter()) if counter is not None else 0


def _as_matrix(embeddings: np.ndarray, n_ids: int, dim: int | None = None) -> np.ndarray:
    matrix = np.ascontiguousarray(embeddings, dtype=np.float32)
    if matrix.ndim != 2 or len(matrix) != n_ids:
        raise ItemIndexError(f"embeddings {matrix.shape} and ids ({n_ids},) do not line up")
    if dim is not None and matrix.shape[1] != dim:
        raise ItemIndexError(f"embeddings have {matrix.shape[1]} dimensions, the index {dim}")
    if not np.isfinite(matrix).all():
        raise ItemIndexError("item embeddings contain NaN or infinite values")
    return matrix


def ivf_lists(n_items: int, config: IndexConfig) -> int:
    """IVF lists for a catalogue: the configured number, else 4 x sqrt(n), never so many that a list
    has fewer training points than FAISS needs (39).

    >>> ivf_lists(1_000_000, IndexConfig())
    4000
    >>> ivf_lists(100, IndexConfig(nlist=50))
    2
    """
    wanted = config.nlist or int(4 * math.sqrt(n_items))
    return max(1, min(wanted, n_items // 39))


class ItemIndex:
    """A FAISS index over item embeddings; ids are the caller's int64 item numbers.

    The ids array keeps the mapping from FAISS rows to item numbers outside FAISS so it stays
    inspectable and works the same for every index kind.
    """

    def __init__(self, index: Any, ids: np.ndarray, use_gpu: str = "no") -> None:
        self._index = index
        self.ids = np.asarray(ids, dtype=np.int64)
        if self._index.ntotal != len(self.ids):
            raise ItemIndexError(f"the index holds {self._index.ntotal} vectors for {len(self.ids)} ids")
        self._gpu_index: Any = None
        self.use_gpu(use_gpu)

    @classmethod
    def build(cls, embeddings: np.ndarray, ids: np.ndarray, config: IndexConfig | None = None) -> ItemIndex:
        """Index (n, dim) embeddings whose row i is item ids[i]; exact or IVF by catalogue size."""
        import faiss

        config = config or IndexConfig()
        matrix = _as_matrix(embeddings, len(ids))
        n, dim = matrix.shape
        index: Any
        if n < config.exact_below:
            index = faiss.IndexFlatIP(dim)
        else:
            nlist = ivf_lists(n, config)
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample_size = min(n, nlist * config.train_points_per_list)
            # A fixed seed: the same embeddings give the same lists, so a rebuilt index answers the same.
            sample = np.sort(np.random.default_rng(0).choice(n, sample_size, replace=False))
            index.train(matrix[sample])
            index.nprobe = min(config.nprobe, nlist)
        index.add(matrix)
        return cls(index, ids, config.use_gpu)

    @property
    def kind(self) -> str:
        return "ivf" if hasattr(self._index, "nprobe") else "flat"

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def on_gpu(self) -> bool:
        return self._gpu_index is not None

    def __len__(self) -> int:
        return len(self.ids)

    def use_gpu(self, mode: str) -> None:
        """Search on the GPU: "auto" when FAISS can, "yes" (an error when it cannot), "no" never."""
        if mode == "no":
            self._gpu_index = None
            return
        if gpu_count() == 0:
            if mode == "yes":
                raise ItemIndexError("use_gpu is 'yes' but FAISS sees no GPU (the faiss-cpu wheel has none)")
            return
        import faiss

        self._gpu_index = faiss.index_cpu_to_all_gpus(self._index)

    def add(self, embeddings: np.ndarray, ids: np.ndarray) -> None:
        """Add new items without rebuilding: exact indexes append, IVF assigns them to trained lists."""
        new_ids = np.asarray(ids, dtype=np.int64)
        matrix = _as_matrix(embeddings, len(new_ids), self.dim)
        clash = np.intersect1d(new_ids, self.ids)
        if len(clash) or len(np.unique(new_ids)) != len(new_ids):
            raise ItemIndexError(f"item ids already indexed or repeated: {clash[:5].tolist()}")
        self._index.add(matrix)
        self.ids = np.concatenate([self.ids, new_ids])
        if self._gpu_index is not None:
            self._gpu_index.add(matrix)

    def search(
        self, queries: np.ndarray, n: int, exclude: list[set[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-n items per query by inner product, skipping each query's excluded ids.

        Args:
            queries: (q, dim) query embeddings.
            n: results per query; fewer when the catalogue minus exclusions is smaller, or when the IVF
                lists probed hold fewer (padded with id -1 and score -inf).
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
        searcher = self._gpu_index if self._gpu_index is not None and fetch <= GPU_MAX_K else self._index
        scores, rows = searcher.search(matrix, fetch)
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

    def describe(self) -> dict[str, Any]:
        import faiss

        meta: dict[str, Any] = {
            "kind": self.kind,
            "n_items": len(self),
            "dim": self.dim,
            "faiss_version": faiss.__version__,
        }
        if self.kind == "ivf":
            meta |= {"nlist": int(self._index.nlist), "nprobe": int(self._index.nprobe)}
        return meta

    def save(self, directory: Path) -> None:
        import faiss

        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(directory / INDEX_FILE))
        np.save(directory / IDS_FILE, self.ids)
        (directory / META_FILE).write_text(json.dumps(self.describe(), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, use_gpu: str = "auto") -> ItemIndex:
        import faiss

        if not (directory / INDEX_FILE).exists():
            raise FileNotFoundError(f"no FAISS index at {directory / INDEX_FILE}")
        try:
            index = faiss.read_index(str(directory / INDEX_FILE))
            ids = np.load(directory / IDS_FILE)
        except (RuntimeError, OSError, ValueError) as err:
            raise ItemIndexError(f"cannot read the item index in {directory}: {err}") from err
        return cls(index, ids, use_gpu)
