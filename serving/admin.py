"""Admin actions behind the token-checked endpoints: reload the registry's models, set the experiments.

Both are plain coroutines over callables the deployment provides, so they are tested without Ray.
`reload` asks each stage to load the version its alias names now and switch to it atomically (a stage
keeps its previous version warm for an instant switch back); `experiments` validates a new experiments
file, loads every variant's model before writing it (a request never waits for a model load), writes it
atomically and makes the watcher read it at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from evaluation.experiments.assignment import Experiment, save_experiments
from serving.api import AdminAction, AdminInputError
from serving.experiments import CHAMPION, ExperimentWatcher

logger = logging.getLogger(__name__)

Reload = Callable[[], Awaitable[dict[str, str]]]
LoadModel = Callable[[str], Awaitable[str]]


def parse_experiments(raw: bytes) -> dict[str, Experiment]:
    """Experiments from `{"experiments": [...]}`; raises `AdminInputError` naming what is wrong.

    >>> parse_experiments(b'{"experiments": []}')
    {}
    """
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdminInputError(f"body: invalid JSON ({err})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("experiments"), list):
        raise AdminInputError('body: must be an object {"experiments": [...]}')
    experiments: dict[str, Experiment] = {}
    for index, item in enumerate(payload["experiments"]):
        try:
            experiment = Experiment.model_validate(item)
        except ValueError as err:
            first = str(err).splitlines()
            raise AdminInputError(f"experiments[{index}]: {' '.join(first[:3])}") from None
        if experiment.name in experiments:
            raise AdminInputError(f"experiments[{index}]: the name {experiment.name!r} is used twice")
        experiments[experiment.name] = experiment
    return experiments


def admin_actions(
    watcher: ExperimentWatcher, reload: Reload, load_model: LoadModel
) -> dict[str, AdminAction]:
    """The `reload` and `experiments` actions of `serving.api.create_api`."""

    async def do_reload(_: bytes) -> dict[str, Any]:
        versions = await reload()
        for ref in watcher.models():
            await load_model(ref)  # a variant alias may have moved too
        logger.info("reloaded models: %s", versions)
        return {"status": "reloaded", "model_version": versions}

    async def do_experiments(raw: bytes) -> dict[str, Any]:
        experiments = parse_experiments(raw)
        loaded: dict[str, str] = {}
        for ref in sorted({v.model for e in experiments.values() for v in e.variants} - {CHAMPION}):
            try:
                loaded[ref] = await load_model(ref)
            except Exception as err:
                raise AdminInputError(f"cannot load model {ref!r}: {str(err)[:300]}") from None
        save_experiments(watcher.path, experiments)
        watcher.current(force=True)
        return {"status": "ok", "experiments": sorted(experiments), "models": loaded}

    return {"reload": do_reload, "experiments": do_experiments}
