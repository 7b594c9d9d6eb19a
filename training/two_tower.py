"""The two-tower retrieval model: a user tower and an item tower meeting in a dot product.

No IO here: a frozen config in, tensors out. Index 0 of both ID tables is reserved for ids the model did
not see in training, so cold users and items still get an embedding from their features alone.

The user tower also reads the user's recent positive items (``history_length`` > 0): their item-ID
embeddings, mean-pooled over the real entries (0 pads a short history, and an item without an ID row
carries nothing), projected and added to the user's ID embedding and dense MLP. A user the model never
saw is then placed by what they liked, not by genre affinity alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# item_age_days is divided by this so that a typical catalogue age lands near 1.
AGE_SCALE_DAYS = 3650.0


@dataclass(frozen=True)
class TwoTowerModelConfig:
    """Sizes of the two towers; the ID-table sizes include the reserved unknown index 0."""

    n_users: int
    n_items: int
    n_genres: int
    embedding_dim: int = 64
    hidden_dim: int = 128
    # Width of the item content embedding the item tower also reads (0: none, as before content existed).
    content_dim: int = 0
    # Recent positive items the user tower pools (0: none, as before history existed).
    history_length: int = 0
    # Pool the item tower's own ID embeddings (True) or a separate table of the same size (False).
    history_shared: bool = True

    @property
    def user_dense_dim(self) -> int:
        return self.n_genres + 1

    @property
    def item_dense_dim(self) -> int:
        return self.n_genres + 2 + self.content_dim


def user_dense_features(genre_affinity: np.ndarray, n_events: np.ndarray) -> np.ndarray:
    """The user tower's dense input: genre affinity and log1p(event count).

    Args:
        genre_affinity: (n, n_genres) affinity rows; NaN (a user without features yet) counts as 0.
        n_events: (n,) event counts; NaN counts as 0.

    Returns:
        (n, n_genres + 1) float32 matrix.
    """
    affinity = np.nan_to_num(np.asarray(genre_affinity, dtype=np.float32))
    counts = np.log1p(np.clip(np.nan_to_num(np.asarray(n_events, dtype=np.float32)), 0, None))
    return np.concatenate([affinity, counts[:, None]], axis=1).astype(np.float32)


def item_dense_features(
    genre_vector: np.ndarray,
    n_events_365d: np.ndarray,
    age_days: np.ndarray,
    content: np.ndarray | None = None,
) -> np.ndarray:
    """The item tower's dense input: multi-hot genres, log1p(365-day events), scaled age, then content.

    Args:
        genre_vector: (n, n_genres) multi-hot rows; NaN counts as 0.
        n_events_365d: (n,) event counts over the last year; NaN counts as 0.
        age_days: (n,) days since publication; unknown (-1 or NaN) becomes 0.
        content: (n, content_dim) content embeddings, or None for a model without them; NaN counts as 0
            (an item whose content is not known yet).

    Returns:
        (n, n_genres + 2 [+ content_dim]) float32 matrix.
    """
    genres = np.nan_to_num(np.asarray(genre_vector, dtype=np.float32))
    counts = np.log1p(np.clip(np.nan_to_num(np.asarray(n_events_365d, dtype=np.float32)), 0, None))
    age = np.clip(np.nan_to_num(np.asarray(age_days, dtype=np.float32), nan=0.0), 0, None) / AGE_SCALE_DAYS
    parts = [genres, counts[:, None], age[:, None]]
    if content is not None:
        parts.append(np.nan_to_num(np.asarray(content, dtype=np.float32)))
    return np.concatenate(parts, axis=1).astype(np.float32)


def pad_history(rows: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """Histories of item-table rows as an (n, length) int64 matrix: each row's last ``length`` entries,
    oldest first, left-aligned and padded with 0 (which :func:`masked_mean` ignores)."""
    out = np.zeros((len(rows), length), dtype=np.int64)
    if length <= 0:
        return out
    for i, row in enumerate(rows):
        tail = list(row)[-length:]
        out[i, : len(tail)] = tail
    return out


def masked_mean(embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of each row's embeddings where ``mask`` is set; zeros for a row with none.

    Args:
        embeddings: (batch, length, dim).
        mask: (batch, length) bool.

    Returns:
        (batch, dim).
    """
    weights = mask.to(embeddings.dtype).unsqueeze(-1)  # (batch, length, 1)
    total = (embeddings * weights).sum(dim=1)  # (batch, dim)
    return total / weights.sum(dim=1).clamp(min=1.0)


class Tower(nn.Module):
    """ID embedding plus an MLP over dense features (plus any extra input), summed and L2-normalised."""

    def __init__(self, n_ids: int, dense_dim: int, embedding_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.ids = nn.Embedding(n_ids, embedding_dim)
        nn.init.normal_(self.ids.weight, std=0.05)
        self.mlp = nn.Sequential(
            nn.Linear(dense_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, embedding_dim),
        )

    def forward(
        self, ids: torch.Tensor, dense: torch.Tensor, extra: torch.Tensor | None = None
    ) -> torch.Tensor:
        # ids: (batch,) int64; dense: (batch, dense_dim); extra: (batch, embedding_dim) or None
        # -> (batch, embedding_dim), unit norm
        summed = self.ids(ids) + self.mlp(dense)
        return F.normalize(summed if extra is None else summed + extra, dim=-1)


class TwoTowerModel(nn.Module):
    """User and item towers whose dot product scores a (user, item) pair."""

    def __init__(self, config: TwoTowerModelConfig) -> None:
        super().__init__()
        self.config = config
        self.user_tower = Tower(
            config.n_users, config.user_dense_dim, config.embedding_dim, config.hidden_dim
        )
        self.item_tower = Tower(
            config.n_items, config.item_dense_dim, config.embedding_dim, config.hidden_dim
        )
        self.history_items: nn.Embedding | None = None
        self.history_proj: nn.Linear | None = None
        if config.history_length > 0:
            if not config.history_shared:
                self.history_items = nn.Embedding(config.n_items, config.embedding_dim)
                nn.init.normal_(self.history_items.weight, std=0.05)
            # Starts as the identity: the pooled items begin where the items themselves sit.
            self.history_proj = nn.Linear(config.embedding_dim, config.embedding_dim, bias=False)
            nn.init.eye_(self.history_proj.weight)

    def pooled_history(self, history: torch.Tensor) -> torch.Tensor:
        """(batch, length) item-table rows, 0 = padding -> (batch, embedding_dim) projected masked mean."""
        if self.history_proj is None:
            raise ValueError("this two-tower model has no history input (history_length is 0)")
        table = self.history_items if self.history_items is not None else self.item_tower.ids
        pooled: torch.Tensor = self.history_proj(masked_mean(table(history), history > 0))
        return pooled

    def user_embedding(
        self, user_ids: torch.Tensor, user_dense: torch.Tensor, history: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(batch, embedding_dim) unit user vectors; ``history`` (batch, length) is read when the model
        has a history input (None, or a zero-width matrix, then means an empty history)."""
        extra = None
        if self.history_proj is not None:
            if history is None or history.shape[1] == 0:
                history = torch.zeros((len(user_ids), 1), dtype=torch.long, device=user_ids.device)
            extra = self.pooled_history(history)
        users: torch.Tensor = self.user_tower(user_ids, user_dense, extra)
        return users

    def forward(
        self,
        user_ids: torch.Tensor,
        user_dense: torch.Tensor,
        item_ids: torch.Tensor,
        item_dense: torch.Tensor,
        history: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # -> (batch, embedding_dim) user embeddings, (batch, embedding_dim) item embeddings
        return self.user_embedding(user_ids, user_dense, history), self.item_tower(item_ids, item_dense)


def drop_ids(ids: torch.Tensor, rate: float) -> torch.Tensor:
    """``ids`` with each entry replaced by the unknown row 0 with probability ``rate`` (ID dropout).

    Training then also visits row 0, next to features, history and content, so users and items unseen
    in training are served by a row that learnt something, and the towers learn to lean on their inputs.
    """
    if rate <= 0:
        return ids
    keep = torch.rand(ids.shape, device=ids.device) >= rate
    return torch.where(keep, ids, torch.zeros_like(ids))


def in_batch_softmax_loss(
    user_emb: torch.Tensor,
    item_emb: torch.Tensor,
    temperature: float,
    item_ids: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax cross-entropy of each user against every item of the batch, its own item the target.

    Args:
        user_emb: (batch, dim) user embeddings; row i's positive is item_emb row i.
        item_emb: (batch, dim) item embeddings.
        temperature: logits are dot products divided by this.
        item_ids: (batch,) optional; other rows holding the same item as row i's positive are masked out
            of row i's negatives, since they are not negatives at all.
        log_q: (batch,) optional log sampling probability of each item; subtracting it from the logits
            (logQ correction) stops popular items from being over-penalised as in-batch negatives.

    Returns:
        The mean loss, a scalar tensor.
    """
    logits = user_emb @ item_emb.T / temperature  # (batch, batch)
    if log_q is not None:
        logits = logits - log_q[None, :]  # (batch, batch): column j corrected by item j's log q
    if item_ids is not None:
        same = item_ids[:, None] == item_ids[None, :]  # (batch, batch)
        collision = same & ~torch.eye(len(item_ids), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(collision, float("-inf"))
    targets = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, targets)
