"""The ranker's item-kNN signal: how similar each candidate is to everything the user liked before.

Item-kNN alone is the strongest MovieLens baseline at K = 10 (docs/models.md), and its score is what the
two-tower retriever summarises least well: the user tower pools the last 20 liked items, item-kNN sums
over the whole liked history. Giving the ranker that score per candidate lets it combine both.

The signal is fitted like any model, on the events before the moment judged: the ranker's training rows
on the training split (their window is validation), evaluation on the history before the test window,
serving on everything the models were trained from (stored beside the ranker as ``item_knn.npz``).
The score itself is ``training.baselines.ItemKNN``'s: one implementation for the baseline and the signal.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from training.baselines import ItemKNN

ITEM_KNN_FILE = "item_knn.npz"


class ItemKNNSignalError(ValueError):
    """An item-kNN artefact that cannot be read (missing, corrupt or of another layout)."""


class ItemKNNSignal:
    """Item neighbours and each known user's liked items, as of the events it was fitted on.

    Args:
        catalogue: item ids, the columns of both matrices.
        users: user ids with at least one positive, the rows of ``liked``.
        neighbours: (items, items) cosine similarities, each row's ``n_neighbours`` largest kept.
        liked: (users, items) 1 where the user has a positive for the item.
        n_neighbours: how many neighbours per item were kept (the setting a refit uses).
    """

    def __init__(
        self,
        catalogue: Sequence[str],
        users: Sequence[str],
        neighbours: sparse.csr_matrix,
        liked: sparse.csr_matrix,
        n_neighbours: int,
    ) -> None:
        self.catalogue, self.users = list(catalogue), list(users)
        n_items, n_users = len(self.catalogue), len(self.users)
        if neighbours.shape != (n_items, n_items) or liked.shape != (n_users, n_items):
            raise ItemKNNSignalError(
                f"item-kNN matrices of shape {neighbours.shape} and {liked.shape} do not fit "
                f"{n_items} items and {n_users} users"
            )
        self.neighbours, self.liked, self.n_neighbours = neighbours, liked, n_neighbours
        # Lookups built once: serving scores every request's candidates with them.
        self._item_col = {item: col for col, item in enumerate(self.catalogue)}
        self._user_row = {user: row for row, user in enumerate(self.users)}

    @classmethod
    def fit(cls, events: pd.DataFrame, n_neighbours: int = 100) -> ItemKNNSignal:
        """Fit on `interaction_events` rows (only positives count), as ``ItemKNN`` does."""
        knn = ItemKNN(n_neighbours=n_neighbours).fit(events)
        return cls(knn.catalogue, knn.users, knn.neighbours, knn.history, n_neighbours)

    def scores(
        self, user_id: str | None, item_ids: Sequence[str], also_liked: Sequence[str] = ()
    ) -> np.ndarray:
        """(len(item_ids),) float32: each item's summed similarity to the user's liked items.

        ``also_liked`` adds items to the user's liked set for this call: serving passes the live
        session's items, so what a user engaged with minutes ago counts before the next retraining.
        NaN for every item when the user has no liked item here (unknown to the signal: the ranker
        treats it as missing, not as "similar to nothing"); 0 for an item outside the catalogue.

        >>> events = pd.DataFrame({"user_id": ["u", "u", "v", "v", "w"], "item_id": ["a", "b", "a", "b", "c"],
        ...                        "event_type": "like", "event_ts": pd.Timestamp("2020-01-01")})
        >>> signal = ItemKNNSignal.fit(events.iloc[[0, 2, 3, 4]])  # u likes a; v a and b; w c
        >>> [round(float(s), 3) for s in signal.scores("u", ["b", "c", "zz"])]
        [0.707, 0.0, 0.0]
        >>> signal.scores("stranger", ["a"]).tolist()
        [nan]
        >>> [round(float(s), 3) for s in signal.scores("stranger", ["b"], also_liked=["a"])]
        [0.707]
        """
        n = len(item_ids)
        row = self._user_row.get(str(user_id)) if user_id is not None else None
        extra = sorted({self._item_col[str(i)] for i in also_liked if str(i) in self._item_col})
        if row is None and not extra:
            return np.full(n, np.nan, dtype=np.float32)
        liked = self.liked[row] if row is not None else sparse.csr_matrix((1, len(self.catalogue)))
        if extra:
            session = sparse.csr_matrix(
                (np.ones(len(extra)), (np.zeros(len(extra), dtype=np.int64), extra)), shape=liked.shape
            )
            liked = liked.maximum(session)
        # The liked row times the neighbour matrix touches only the liked items' neighbour lists, so a
        # request costs (liked items x n_neighbours), not the catalogue size.
        summed = (liked @ self.neighbours).tocsr()
        summed.sort_indices()
        columns = np.fromiter(
            (self._item_col.get(str(i), -1) for i in item_ids),
            dtype=np.int64,
            count=n,
        )
        found = np.searchsorted(summed.indices, columns)
        hit = (columns >= 0) & (found < len(summed.indices))
        hit[hit] = summed.indices[found[hit]] == columns[hit]
        out = np.zeros(n, dtype=np.float32)
        out[hit] = summed.data[found[hit]]
        return out

    def save(self, path: Path) -> None:
        """Write both matrices and the ids to one ``.npz`` file."""
        arrays: dict[str, np.ndarray] = {
            "catalogue": np.asarray(self.catalogue, dtype=str),
            "users": np.asarray(self.users, dtype=str),
            "n_neighbours": np.asarray(self.n_neighbours),
            **_csr_arrays("neighbours", self.neighbours),
            **_csr_arrays("liked", self.liked),
        }
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # numpy's stub types the kwargs as allow_pickle

    @classmethod
    def load(cls, path: Path) -> ItemKNNSignal:
        """The signal saved at ``path``.

        Raises:
            ItemKNNSignalError: the file is missing, not an ``.npz`` of this layout, or inconsistent.
        """
        if not path.exists():
            raise ItemKNNSignalError(f"item-kNN artefact missing: {path}")
        try:
            with np.load(path, allow_pickle=False) as arrays:
                catalogue = [str(i) for i in arrays["catalogue"]]
                users = [str(u) for u in arrays["users"]]
                neighbours = _csr_from(arrays, "neighbours", (len(catalogue), len(catalogue)))
                liked = _csr_from(arrays, "liked", (len(users), len(catalogue)))
                n_neighbours = int(arrays["n_neighbours"])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            raise ItemKNNSignalError(f"item-kNN artefact unreadable: {path}: {err}") from None
        return cls(catalogue, users, neighbours, liked, n_neighbours)


def _csr_arrays(name: str, matrix: sparse.csr_matrix) -> dict[str, np.ndarray]:
    return {
        f"{name}_data": matrix.data.astype(np.float32),
        f"{name}_indices": matrix.indices,
        f"{name}_indptr": matrix.indptr,
    }


def _csr_from(arrays: np.lib.npyio.NpzFile, name: str, shape: tuple[int, int]) -> sparse.csr_matrix:
    """A CSR matrix from its three arrays; scipy checks they fit ``shape`` (ValueError if not)."""
    matrix = sparse.csr_matrix(
        (arrays[f"{name}_data"], arrays[f"{name}_indices"], arrays[f"{name}_indptr"]), shape=shape
    )
    matrix.check_format(full_check=True)
    return matrix
