"""Experiment definitions, deterministic user buckets, and the file serving reads them from.

A user's bucket in an experiment is a hash of (experiment salt, user id) mapped to [0, 1): the same
user always lands in the same variant, and experiments with different salts are independent of each
other, so several can run at once on the same users without their assignments correlating.

>>> arms = (Variant("control", "champion", 0.9), Variant("treatment", "challenger", 0.1))
>>> exp = Experiment("ranker-v2", arms)
>>> assign("42", exp) == assign("42", exp)
True
>>> round(sum(assign(str(u), exp) == "treatment" for u in range(20_000)) / 20_000, 2)
0.1
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from evaluation.experiments.ab_tests import ExperimentError
from evaluation.experiments.canary import Stage, Thresholds

# Shares are compared with a tolerance because YAML/JSON round-trips of decimal fractions are inexact.
_SHARE_TOLERANCE = 1e-9


class Variant(BaseModel):
    """One arm: a name, the registered model alias (or version) it serves, and its traffic share."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    model: str = Field(min_length=1)
    traffic: float = Field(ge=0, le=1)

    def __init__(self, name: str, model: str, traffic: float, **data: Any) -> None:
        super().__init__(name=name, model=model, traffic=traffic, **data)


class Rollout(BaseModel):
    """A canary rollout's plan, fixed when it starts, and where it stands (serving ignores it).

    Stored with the experiment it drives, so the thresholds a rollout is judged by are on record next
    to the traffic shares they moved.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    canary: str = Field(min_length=1)  # the variant that receives the canary's share
    thresholds: Thresholds
    stages: tuple[Stage, ...]
    stage: int = Field(default=0, ge=0)
    status: str = "running"
    started_at: float = 0.0  # seconds on the rollout's clock (wall or simulated)
    updated_at: float = 0.0


class Experiment(BaseModel):
    """Variants whose traffic shares sum to 1; `salt` defaults to the name, so buckets are per experiment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    variants: tuple[Variant, ...]
    salt: str = ""
    rollout: Rollout | None = None

    def __init__(self, name: str, variants: Sequence[Variant], salt: str = "", **data: Any) -> None:
        super().__init__(name=name, variants=tuple(variants), salt=salt, **data)

    @model_validator(mode="after")
    def _check(self) -> Experiment:
        names = [v.name for v in self.variants]
        if not names:
            raise ValueError(f"experiment {self.name!r} has no variants")
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name!r} repeats a variant name: {names}")
        total = sum(v.traffic for v in self.variants)
        if abs(total - 1.0) > _SHARE_TOLERANCE:
            raise ValueError(f"experiment {self.name!r}: traffic shares sum to {total:g}, not 1")
        return self

    def with_traffic(self, shares: Mapping[str, float]) -> Experiment:
        """The same experiment with new shares per variant name (for a canary moving to its next stage)."""
        unknown = set(shares) - {v.name for v in self.variants}
        if unknown:
            raise ExperimentError(f"experiment {self.name!r} has no variant {sorted(unknown)}")
        variants = [Variant(v.name, v.model, shares.get(v.name, v.traffic)) for v in self.variants]
        return Experiment(self.name, variants, self.salt, rollout=self.rollout)


def bucket(user_id: str, salt: str) -> float:
    """The user's position in [0, 1) for an experiment salt: uniform, stable across processes and runs."""
    digest = hashlib.blake2b(f"{salt}\x1f{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign(user_id: str, experiment: Experiment) -> str:
    """The name of the variant this user sees: variants own consecutive slices of [0, 1) in order."""
    position = bucket(user_id, experiment.salt or experiment.name)
    edge = 0.0
    for variant in experiment.variants:
        edge += variant.traffic
        if position < edge:
            return variant.name
    # Shares sum to 1 within tolerance; a position past the rounded last edge belongs to the last arm.
    return experiment.variants[-1].name


def load_experiments(path: Path) -> dict[str, Experiment]:
    """Experiments by name from the JSON file serving watches; a missing file means none are running."""
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
        experiments = [Experiment.model_validate(item) for item in raw.get("experiments", [])]
    except (json.JSONDecodeError, AttributeError, ValueError) as err:
        raise ExperimentError(f"{path}: not a valid experiments file: {err}") from None
    return {e.name: e for e in experiments}


def save_experiments(path: Path, experiments: Mapping[str, Experiment]) -> None:
    """Write the experiments atomically (temp file + rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"experiments": [e.model_dump() for e in experiments.values()]}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".experiments-", suffix=".json")
    with os.fdopen(fd, "w") as handle:
        json.dump(body, handle, indent=2)
    os.replace(tmp, path)
