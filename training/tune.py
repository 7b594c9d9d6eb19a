"""Hyperparameter search, the pure part: each target's search space, a trial's settings applied to the
config, the trial to keep, and the best-settings file. training/tune_run.py runs the search on Ray Tune.

Settings are named as for ``--set`` (``two_tower.embedding_dim``), so a trial's parameters, the MLflow
params of its run and the best-settings file all read as config overrides.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from recsys.config import PipelineConfig, SearchDimension, _set_dotted

Target = Literal["two_tower", "multitask"]
TARGETS: tuple[Target, ...] = ("two_tower", "multitask")
# The validation metric each trainer already computes, maximised.
OBJECTIVES: dict[Target, str] = {"two_tower": "val_recall_at_10", "multitask": "ranker_holdout_auc"}
# Where a target's settings live in the config: a space may only tune those.
SECTIONS: dict[Target, str] = {"two_tower": "two_tower.", "multitask": "ranker.multitask."}
EPOCH_SETTINGS: dict[Target, str] = {"two_tower": "two_tower.epochs", "multitask": "ranker.multitask.epochs"}


@dataclass(frozen=True)
class Trial:
    """One finished trial: its settings and its objective value (NaN when it reported none)."""

    settings: dict[str, Any]
    value: float


def apply_settings(config: PipelineConfig, settings: Mapping[str, Any]) -> PipelineConfig:
    """``config`` with each dotted setting replaced, validated as a config file would be.

    >>> apply_settings(PipelineConfig(), {"two_tower.embedding_dim": 32}).two_tower.embedding_dim
    32

    Raises:
        ValueError: a setting that does not exist or a value it does not accept.
    """
    tree = config.model_dump(mode="python")
    for name, value in settings.items():
        _set_dotted(tree, name, value)
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"tuned setting {where}: {first['msg']}") from None


def setting_value(config: PipelineConfig, name: str) -> Any:
    """The config's current value of a dotted setting.

    >>> setting_value(PipelineConfig(), "ranker.multitask.task_weights.click")
    1.0
    """
    node: Any = config.model_dump(mode="python")
    for key in name.split("."):
        if not isinstance(node, dict) or key not in node:
            raise ValueError(f"{name} is not a setting")
        node = node[key]
    return node


def search_space(config: PipelineConfig, target: Target) -> dict[str, SearchDimension]:
    """The target's space (``tune.two_tower`` or ``tune.multitask``), checked: not empty, only the target's
    settings, and both ends of every range (every choice) a value the setting accepts.

    Raises:
        ValueError: an unknown target, an empty space, or a dimension the config cannot take.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown tuning target {target!r}; known: {', '.join(TARGETS)}")
    space = dict(config.tune.two_tower if target == "two_tower" else config.tune.multitask)
    if not space:
        raise ValueError(f"tune.{target} is an empty search space: give it at least one setting")
    for name, dimension in space.items():
        if not name.startswith(SECTIONS[target]):
            raise ValueError(f"tune.{target} may only tune {SECTIONS[target]}* settings, not {name}")
        for value in dimension.values or (dimension.low, dimension.high):
            apply_settings(config, {name: value})
    return space


def within(dimension: SearchDimension, value: Any) -> bool:
    """Whether ``value`` lies in the dimension: one of its choices, or inside its range."""
    if dimension.kind == "choice":
        return value in dimension.values
    assert dimension.low is not None and dimension.high is not None  # checked by SearchDimension
    return bool(dimension.low <= float(value) <= dimension.high)


def configured_point(config: PipelineConfig, space: Mapping[str, SearchDimension]) -> dict[str, Any] | None:
    """The config's own values of the searched settings, when they lie in the space: tried first, so
    every search reports the configured settings' score beside the best one's."""
    point = {name: setting_value(config, name) for name in space}
    return point if all(within(space[name], value) for name, value in point.items()) else None


def trial_config(config: PipelineConfig, target: Target, settings: Mapping[str, Any]) -> PipelineConfig:
    """The config a trial trains with: its settings, and `tune.epochs` when that caps the epochs."""
    extra = {} if config.tune.epochs is None else {EPOCH_SETTINGS[target]: config.tune.epochs}
    return apply_settings(config, {**settings, **extra})


def concurrent_trials(cpus: float, gpus: float, workers: int, use_gpu: bool, trials: int) -> int:
    """Trials at once: as many training runs of ``workers`` workers as the CPUs (or GPUs) hold.

    >>> concurrent_trials(cpus=16, gpus=1, workers=1, use_gpu=True, trials=8)
    1
    >>> concurrent_trials(cpus=2, gpus=0, workers=1, use_gpu=False, trials=8)
    2
    """
    fits = gpus // workers if use_gpu else cpus // workers
    return int(max(1, min(fits, trials)))


def best_trial(trials: Sequence[Trial]) -> Trial:
    """The trial with the highest finite objective (the first one on a tie).

    Raises:
        ValueError: no trial reported a finite value.
    """
    scored = [t for t in trials if math.isfinite(t.value)]
    if not scored:
        raise ValueError(f"none of the {len(trials)} trials reported a finite objective")
    return max(scored, key=lambda t: t.value)


def best_document(
    target: Target,
    dataset_version: str,
    best: Trial,
    configured: Trial | None,
    n_trials: int,
    sample_users: int | None,
    parent_run_id: str,
) -> dict[str, Any]:
    """What best.yaml holds: the best settings (``settings``, each a ``--set`` override) and where they
    came from."""
    return {
        "target": target,
        "dataset_version": dataset_version,
        "metric": OBJECTIVES[target],
        "value": best.value,
        "configured_value": None if configured is None else configured.value,
        "trials": n_trials,
        "sample_users": sample_users,
        "mlflow_parent_run": parent_run_id,
        "settings": dict(best.settings),
    }


def write_best(path: Path, document: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Best trial of `recsys tune`; use with `recsys train --tuned <this file>`.\n"
    path.write_text(header + yaml.safe_dump(dict(document), sort_keys=False))
    return path


def tuned_overrides(path: Path) -> list[str]:
    """The ``--set`` overrides a best-settings file holds (its ``settings``)."""
    try:
        document = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"cannot read tuned settings {path}: {err}") from None
    settings = document.get("settings") if isinstance(document, dict) else None
    if not isinstance(settings, dict) or not settings:
        raise ValueError(f"{path} holds no `settings` mapping: is it a best.yaml of `recsys tune`?")
    # JSON is YAML: the overrides parse back to the same numbers and strings.
    return [f"{name}={json.dumps(value)}" for name, value in settings.items()]
