"""The multi-task ranker: a DCN-v2 cross network and a deep MLP shared by a click head and a satisfaction
head; the ranking score is a per-surface weighted mix of the heads' probabilities.

No IO here: a frozen config in, tensors out. The model reads the ranker matrix as built by
``training.ranker_features.build_ranker_matrix`` (NaN for unknown values) and standardises it itself with
statistics it keeps as buffers, so the weights file alone reproduces training's input transform.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TASKS: tuple[str, ...] = ("click", "satisfaction")
DEFAULT_SURFACE = "default"
# Standardised inputs are clipped here: a count far outside the training range must not saturate a layer.
CLIP_Z = 5.0


@dataclass(frozen=True)
class MultiTaskModelConfig:
    """Shape of the model; ``n_features`` is the width of the ranker matrix it reads."""

    n_features: int
    hidden_sizes: tuple[int, ...] = (128, 64)
    cross_layers: int = 2
    head_hidden: int = 32
    dropout: float = 0.0

    @property
    def input_dim(self) -> int:
        return 2 * self.n_features  # standardised values and their missing indicators


@dataclass(frozen=True)
class SurfaceWeights:
    """Per surface, the weight of each head's probability in the ranking score (``default`` for the rest).

    Weights are normalised to sum to 1, so every surface's score is a probability-like number in [0, 1].
    """

    weights: Mapping[str, tuple[float, float]] = field(default_factory=lambda: {DEFAULT_SURFACE: (0.5, 0.5)})

    def __post_init__(self) -> None:
        if DEFAULT_SURFACE not in self.weights:
            raise ValueError(f"surface weights need a {DEFAULT_SURFACE!r} entry")
        for surface, pair in self.weights.items():
            if len(pair) != len(TASKS) or min(pair) < 0 or sum(pair) <= 0:
                raise ValueError(f"surface {surface!r}: head weights must be non-negative, not all zero")

    def of(self, surface: str | None) -> np.ndarray:
        """(n_tasks,) normalised head weights of ``surface``; unknown or None use the default.

        >>> SurfaceWeights({"default": (1.0, 3.0)}).of("search").tolist()
        [0.25, 0.75]
        """
        pair = self.weights.get(surface or DEFAULT_SURFACE, self.weights[DEFAULT_SURFACE])
        w = np.asarray(pair, dtype=np.float64)
        return np.asarray(w / w.sum(), dtype=np.float64)


class CrossLayer(nn.Module):
    """DCN-v2 cross layer: x_{l+1} = x0 * (W x_l + b) + x_l (full-rank W)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # x0, x: (batch, dim) -> (batch, dim)
        out: torch.Tensor = x0 * self.linear(x) + x
        return out


def _mlp(sizes: tuple[int, ...], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for d_in, d_out in pairwise(sizes):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class MultiTaskRanker(nn.Module):
    """Shared bottom (cross network beside a deep MLP), then one logit per task."""

    mean: torch.Tensor  # (n_features,) buffer
    scale: torch.Tensor  # (n_features,) buffer

    def __init__(self, config: MultiTaskModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.input_dim
        # Input statistics: set from the training rows by ``fit_normaliser``; identity until then.
        self.register_buffer("mean", torch.zeros(config.n_features))
        self.register_buffer("scale", torch.ones(config.n_features))
        self.cross = nn.ModuleList([CrossLayer(d) for _ in range(config.cross_layers)])
        self.deep = _mlp((d, *config.hidden_sizes), config.dropout)
        shared = d + (config.hidden_sizes[-1] if config.hidden_sizes else d)
        self.heads = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Linear(shared, config.head_hidden), nn.ReLU(), nn.Linear(config.head_hidden, 1)
                )
                for _ in TASKS
            ]
        )

    def fit_normaliser(self, features: np.ndarray) -> None:
        """Column means and standard deviations of the training rows, ignoring NaN (unknown) values."""
        x = np.asarray(features, dtype=np.float64)
        known = ~np.isnan(x)
        count = np.maximum(known.sum(axis=0), 1)
        mean = np.where(known, x, 0.0).sum(axis=0) / count
        var = np.where(known, (x - mean) ** 2, 0.0).sum(axis=0) / count
        scale = np.where(var > 1e-12, np.sqrt(var), 1.0)  # a constant column stays unscaled
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, n_features) raw rows with NaN -> (batch, 2 * n_features) model input."""
        missing = torch.isnan(features)
        z = ((features - self.mean) / self.scale).clamp(-CLIP_Z, CLIP_Z)
        z = torch.where(missing, torch.zeros_like(z), z)
        return torch.cat([z, missing.to(z.dtype)], dim=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(batch, n_features) raw ranker rows -> (batch, n_tasks) logits, columns in TASKS order."""
        x0 = self.encode(features)  # (batch, d)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)  # (batch, d)
        shared = torch.cat([x, self.deep(x0)], dim=1)  # (batch, d + hidden_sizes[-1])
        return torch.cat([head(shared) for head in self.heads], dim=1)  # (batch, n_tasks)


def multitask_loss(logits: torch.Tensor, labels: torch.Tensor, task_weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum over tasks of the mean binary cross-entropy of each head.

    Args:
        logits: (batch, n_tasks) head logits.
        labels: (batch, n_tasks) 0/1 targets.
        task_weights: (n_tasks,) non-negative loss weights.
    """
    per_task = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=0)  # (n_tasks,)
    return (per_task * task_weights).sum()


def combine_heads(probabilities: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n, n_tasks) head probabilities and (n_tasks,) normalised weights -> (n,) ranking scores.

    >>> combine_heads(np.array([[0.8, 0.2]]), np.array([0.25, 0.75])).round(6).tolist()
    [0.35]
    """
    return np.asarray(probabilities @ weights, dtype=np.float64)


def score_log_odds(scores: np.ndarray) -> np.ndarray:
    """The log-odds of mixed head probabilities: what the Platt calibrator reads.

    A logistic map of the log-odds (not of the probability itself) keeps the calibrated values spread
    like the heads' own probabilities instead of squeezing most of them onto the base rate.

    >>> score_log_odds(np.array([0.5, 0.8])).round(4).tolist()
    [0.0, 1.3863]
    """
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.asarray(np.log(p / (1 - p)), dtype=np.float64)


@torch.no_grad()
def head_probabilities(model: nn.Module, features: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """(n, n_tasks) sigmoid of the heads' logits for raw ranker rows, in eval mode."""
    model.eval()
    first = next(iter(model.parameters()), None)  # an INT8 model keeps its weights packed, on the CPU
    device = first.device if first is not None else torch.device("cpu")
    parts = [
        torch.sigmoid(
            model(torch.as_tensor(features[start : start + batch_size], dtype=torch.float32, device=device))
        ).cpu()
        for start in range(0, len(features), batch_size)
    ]
    if not parts:
        return np.zeros((0, len(TASKS)), dtype=np.float64)
    return np.asarray(torch.cat(parts).numpy(), dtype=np.float64)


def quantise_int8(model: nn.Module) -> nn.Module:
    """A copy with every Linear layer dynamically quantised to INT8 (weights int8, activations on the fly)."""
    import copy
    import warnings

    from torch.ao.quantization import quantize_dynamic

    fp32 = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        # torch 2.13 warns that eager-mode quantisation is moving to torchao; this API still works.
        warnings.simplefilter("ignore")
        quantised: nn.Module = quantize_dynamic(fp32, {nn.Linear}, dtype=torch.qint8)  # type: ignore[no-untyped-call]
    return quantised


def keep_int8(auc_fp32: float, auc_int8: float, max_relative_drop: float = 0.005) -> bool:
    """Whether the INT8 model is kept: its AUC is less than ``max_relative_drop`` (relative) below fp32's.

    >>> keep_int8(0.800, 0.797), keep_int8(0.800, 0.796)
    (True, False)
    """
    if not (np.isfinite(auc_fp32) and np.isfinite(auc_int8)) or auc_fp32 <= 0:
        return False
    return bool((auc_fp32 - auc_int8) / auc_fp32 < max_relative_drop)
