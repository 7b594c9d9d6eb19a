"""Typed configuration for every stage, loaded from one YAML file.

Each component owns a frozen model with ``extra="forbid"`` so that a typo in a YAML key is an error,
not a silently ignored setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recsys.ingest.cleaning import CleaningConfig
from recsys.simulator.settings import SimulatorConfig
from serving.reranking import RerankConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "ml-latest-small"


class ConfigError(ValueError):
    """A configuration file that cannot be read or does not validate."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IngestConfig(_Frozen):
    data_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("RECSYS_DATA_DIR") or DEFAULT_DATA_DIR)
    )
    # Keep only this many users (chosen by a seeded hash), for quick runs and tests; None keeps all.
    sample_users: int | None = Field(default=None, ge=1)
    seed: int = 0
    # Ratings at or above this become `like` events; below `skip_below` they become `skip`.
    like_threshold: float = 4.0
    skip_below: float = 2.5
    session_gap_minutes: int = Field(default=30, ge=1)


class FeaturesConfig(_Frozen):
    spark_master: str = "local[2]"
    # Batch features are snapshotted at this cadence so that point-in-time joins see only the past.
    snapshot_every_days: int = Field(default=90, ge=1)
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = Field(default_factory=lambda: os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")


class SplitConfig(_Frozen):
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.2, gt=0, lt=0.5)
    min_user_events: int = Field(default=5, ge=3)


class TwoTowerConfig(_Frozen):
    embedding_dim: int = Field(default=64, ge=4)
    hidden_dim: int = Field(default=128, ge=4)
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=512, ge=8)
    learning_rate: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-6, ge=0)
    temperature: float = Field(default=0.1, gt=0)
    # Subtract log item frequency from in-batch logits so popular items are not over-penalised as negatives.
    logq_correction: bool = True
    num_workers: int = Field(default=1, ge=1)
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    seed: int = 0


class RankerConfig(_Frozen):
    n_candidates: int = Field(default=200, ge=10)
    num_leaves: int = Field(default=31, ge=2)
    n_estimators: int = Field(default=300, ge=1)
    learning_rate: float = Field(default=0.05, gt=0)
    min_child_samples: int = Field(default=20, ge=1)
    num_threads: int = Field(default=2, ge=1)
    seed: int = 0


class EvaluateConfig(_Frozen):
    ks: tuple[int, ...] = (10, 50, 100)
    # Simple collaborative filters always in the table beside popularity (training/baselines.py names).
    baselines: tuple[str, ...] = ("item-knn", "implicit-als")


class ServeConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    n_candidates: int = Field(default=200, ge=10)
    max_k: int = Field(default=100, ge=1)
    # Past this, the answer is given in retrieval order (fallback) rather than late.
    ranking_timeout_s: float = Field(default=1.0, gt=0)
    rerank: RerankConfig = RerankConfig()


class DriftConfig(_Frozen):
    # Both windows end at the newest event; `current` is the most recent window, `reference` the one before.
    current_days: int = Field(default=365, ge=1)
    reference_days: int = Field(default=365, ge=1)
    drift_share_threshold: float = Field(default=0.5, gt=0, le=1)


class PipelineConfig(_Frozen):
    state_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("RECSYS_STATE_DIR") or REPO_ROOT / ".state")
    )
    ingest: IngestConfig = IngestConfig()
    cleaning: CleaningConfig = CleaningConfig()
    features: FeaturesConfig = FeaturesConfig()
    split: SplitConfig = SplitConfig()
    two_tower: TwoTowerConfig = TwoTowerConfig()
    ranker: RankerConfig = RankerConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    serve: ServeConfig = ServeConfig()
    drift: DriftConfig = DriftConfig()
    simulator: SimulatorConfig = SimulatorConfig()


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[leaf] = value


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config and apply ``section.key=value`` overrides (values parsed as YAML).

    >>> load_config(overrides=["two_tower.epochs=2"]).two_tower.epochs
    2
    """
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config {path}: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping, got {type(loaded).__name__}")
        tree = loaded
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    try:
        config = PipelineConfig.model_validate(tree)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"invalid config at {where}: {first['msg']}") from err
    if path is not None and not config.state_dir.is_absolute():
        # A relative state_dir in a file is relative to that file's project, not the caller's cwd.
        config = config.model_copy(update={"state_dir": (REPO_ROOT / config.state_dir).resolve()})
    return config
