"""MLflow tracking and registry: log a trained model with its artefacts, register it, move aliases.

The tracking store and the artefact root are set explicitly to the state directory, never MLflow's
cwd defaults. Models are logged as pyfunc models carrying their artefact directory, so the registry
holds a loadable model, and `load_model` hands back that directory for RetrievalModel/RankingModel.

Aliases: `champion` is what serving loads; `challenger` is a candidate waiting for the gate. Every
promotion pushes the outgoing champion onto a registered-model tag (`previous_champions`, newest last),
so `rollback` can restore it without anyone remembering version numbers.
"""

from __future__ import annotations

import subprocess
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recsys.state import MissingStateError, StateDir

EXPERIMENT = "recsys"
TWO_TOWER_MODEL = "recsys-two-tower"
RANKER_MODEL = "recsys-ranker"
CHAMPION = "champion"
CHALLENGER = "challenger"
# Registered-model tag: comma-separated former champions, newest last (the rollback stack).
PREVIOUS_CHAMPIONS_TAG = "previous_champions"
ARTIFACT_KEY = "model_dir"
# Stated, not inferred: inference imports the model in a subprocess and costs seconds per model.
PIP_REQUIREMENTS = (
    "torch==2.13.0",
    "faiss-cpu==1.15.1",
    "lightgbm==4.7.0",
    "mlflow==3.17.2",
    "pandas==2.3.3",
)


def _pyfunc_class() -> type:
    """The pyfunc wrapper, defined lazily so importing this module does not import MLflow."""
    import mlflow.pyfunc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's note that predict's type hints give no schema
        return _define_pyfunc_class(mlflow.pyfunc.PythonModel)


def _define_pyfunc_class(base: type) -> type:
    class ArtifactDirModel(base):  # type: ignore[misc]
        """Loads RetrievalModel or RankingModel from the logged artefact directory.

        `predict` takes a frame with `user_id` (and optional `n`) for the retriever and returns the top
        items per user from features-free retrieval; serving uses runtime.py directly instead.
        """

        def __init__(self, kind: str) -> None:
            self.kind = kind

        def load_context(self, context: Any) -> None:
            from training.runtime import RankingModel, RetrievalModel

            directory = Path(context.artifacts[ARTIFACT_KEY])
            loader = RetrievalModel if self.kind == "retrieval" else RankingModel
            self.model = loader.load(directory, version="pyfunc")

        def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
            import pandas as pd

            from training.runtime import RetrievalModel

            if not isinstance(self.model, RetrievalModel):
                raise NotImplementedError("the ranker pyfunc is a container; score with training.runtime")
            n = int((params or {}).get("n", 10))
            rows = []
            for user_id in model_input["user_id"].astype(str):
                items, scores = self.model.retrieve(user_id, {}, n)
                rows.append({"user_id": user_id, "item_ids": items, "scores": [float(s) for s in scores]})
            return pd.DataFrame(rows)

    return ArtifactDirModel


def configure(state: StateDir) -> Any:
    """Point MLflow at the state directory and return a client; creates the experiment if needed."""
    import mlflow

    state.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(state.mlflow_tracking_uri)
    mlflow.set_registry_uri(state.mlflow_tracking_uri)
    client = mlflow.MlflowClient(
        tracking_uri=state.mlflow_tracking_uri, registry_uri=state.mlflow_tracking_uri
    )
    if client.get_experiment_by_name(EXPERIMENT) is None:
        client.create_experiment(EXPERIMENT, artifact_location=state.mlflow_artifacts.resolve().as_uri())
    mlflow.set_experiment(EXPERIMENT)
    return client


def git_commit() -> str | None:
    """The code version: the git commit of this checkout, when there is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def log_and_register(
    state: StateDir,
    *,
    model_name: str,
    kind: str,
    artifact_dir: Path,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    alias: str = CHAMPION,
    metric_history: Sequence[Mapping[str, float]] = (),
) -> tuple[str, str]:
    """Log one model run (params, metrics, tags, pyfunc with artefacts), register it, give it `alias`.

    Args:
        model_name: registered model name (TWO_TOWER_MODEL or RANKER_MODEL).
        kind: "retrieval" or "ranking": which runtime class the pyfunc loads.
        artifact_dir: the directory written by training.runtime.write_*_artifacts.
        tags: at least dataset_version and feature_service.
        metric_history: per-epoch metrics, logged with the epoch (1, 2, ...) as the step.
        alias: `champion` promotes the new version (remembering the old champion for rollback); any
            other alias only points at it.

    Returns:
        (run_id, registered version).
    """
    import mlflow

    client = configure(state)
    with mlflow.start_run(run_name=model_name) as run:
        mlflow.log_params(dict(params))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        for step, epoch in enumerate(metric_history, start=1):
            mlflow.log_metrics({k: float(v) for k, v in epoch.items()}, step=step)
        commit = git_commit()
        mlflow.set_tags({**tags, "model_name": model_name, **({"git_commit": commit} if commit else {})})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLflow's notes on type hints and pickling
            info = mlflow.pyfunc.log_model(
                name=kind,
                python_model=_pyfunc_class()(kind),
                artifacts={ARTIFACT_KEY: str(artifact_dir)},
                pip_requirements=list(PIP_REQUIREMENTS),
            )
        version = mlflow.register_model(info.model_uri, model_name, tags=dict(tags))
        client.set_model_version_tag(model_name, version.version, "run_id", run.info.run_id)
    if alias == CHAMPION:
        promote(state, model_name, str(version.version))
    else:
        set_alias(state, model_name, alias, str(version.version))
    return run.info.run_id, str(version.version)


def _has_registry(state: StateDir) -> bool:
    return (state.mlflow / "mlflow.db").exists()


def model_version(state: StateDir, model_name: str, ref: str) -> Any:
    """The registry entry named by `ref`: an alias (`champion`, `challenger`) or a version number.

    Raises:
        MissingStateError: no such model, alias or version.
    """
    import mlflow

    if not _has_registry(state):
        raise MissingStateError(f"no model registry in {state.mlflow}: run `recsys train` first")
    client = configure(state)
    ref = str(ref).strip()
    try:
        if ref.isdigit():
            return client.get_model_version(model_name, ref)
        return client.get_model_version_by_alias(model_name, ref)
    except mlflow.exceptions.MlflowException:
        what = f"version {ref}" if ref.isdigit() else f"alias {ref!r}"
        raise MissingStateError(f"{model_name} has no {what} in {state.mlflow}") from None


def resolve_version(state: StateDir, model_name: str, ref: str) -> str:
    """The version number that `ref` (an alias or a version number) names; raises when there is none."""
    return str(model_version(state, model_name, ref).version)


def alias_version(state: StateDir, model_name: str, alias: str) -> Any | None:
    """The registry entry behind `alias`, or None when the alias (or the registry) does not exist."""
    try:
        return model_version(state, model_name, alias)
    except MissingStateError:
        return None


def set_alias(state: StateDir, model_name: str, alias: str, version: str) -> None:
    """Point `alias` at `version` (checked to exist). Use `promote` for `champion`, which keeps history."""
    resolve_version(state, model_name, version)
    configure(state).set_registered_model_alias(model_name, alias, str(version))


def previous_champions(state: StateDir, model_name: str) -> list[str]:
    """Former champions, oldest first, as recorded by `promote`."""
    tags = configure(state).get_registered_model(model_name).tags
    return [v for v in tags.get(PREVIOUS_CHAMPIONS_TAG, "").split(",") if v]


def promote(state: StateDir, model_name: str, version: str) -> str | None:
    """Make `version` the champion; returns the champion it replaced (None when there was none).

    The replaced champion is pushed onto the rollback stack. A challenger alias on the promoted version
    is removed: it is no longer waiting for anything.
    """
    client = configure(state)
    version = resolve_version(state, model_name, version)
    current = alias_version(state, model_name, CHAMPION)
    previous = str(current.version) if current is not None else None
    if previous == version:
        return previous
    if previous is not None:
        stack = [*previous_champions(state, model_name), previous]
        client.set_registered_model_tag(model_name, PREVIOUS_CHAMPIONS_TAG, ",".join(stack))
    client.set_registered_model_alias(model_name, CHAMPION, version)
    challenger = alias_version(state, model_name, CHALLENGER)
    if challenger is not None and str(challenger.version) == version:
        client.delete_registered_model_alias(model_name, CHALLENGER)
    return previous


def rollback(state: StateDir, model_name: str) -> str:
    """Make the most recent former champion the champion again; returns its version.

    Raises:
        MissingStateError: there is no former champion to go back to.
    """
    if alias_version(state, model_name, CHAMPION) is None:
        raise MissingStateError(f"{model_name} has no champion: nothing to roll back")
    stack = previous_champions(state, model_name)
    if not stack:
        raise MissingStateError(f"{model_name} has no previous champion to roll back to")
    client = configure(state)
    restored = stack.pop()
    client.set_registered_model_alias(model_name, CHAMPION, restored)
    client.set_registered_model_tag(model_name, PREVIOUS_CHAMPIONS_TAG, ",".join(stack))
    return restored


def champion_version(state: StateDir, model_name: str) -> Any | None:
    """The registry entry behind `champion`, or None when there is none yet."""
    return alias_version(state, model_name, CHAMPION)


def load_champion(state: StateDir, model_name: str) -> tuple[Path, str]:
    """Resolve `champion` to (local artefact directory, registered version); call once per process."""
    if champion_version(state, model_name) is None:
        raise MissingStateError(f"no champion for {model_name!r} in {state.mlflow}: run `recsys train` first")
    return load_model(state, model_name, CHAMPION)


def load_model(state: StateDir, model_name: str, ref: str) -> tuple[Path, str]:
    """Resolve `ref` (alias or version) to (local artefact directory, registered version)."""
    import mlflow

    entry = model_version(state, model_name, ref)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{model_name}/{entry.version}", tracking_uri=state.mlflow_tracking_uri
    )
    return Path(local) / _artifact_subdir(local), str(entry.version)


def _artifact_subdir(model_root: str) -> str:
    """Where the artefact dir lies inside the logged model, as the MLmodel file records it."""
    import yaml

    spec = yaml.safe_load((Path(model_root) / "MLmodel").read_text())
    artifacts = spec["flavors"]["python_function"].get("artifacts", {})
    return str(artifacts[ARTIFACT_KEY]["path"])


def log_metrics_to_run(state: StateDir, run_id: str, metrics: Mapping[str, float]) -> None:
    """Add evaluation metrics to an existing training run."""
    client = configure(state)
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))


def resolve_system(state: StateDir, ref: str) -> tuple[str, str]:
    """(two-tower version, ranker version) of the two-stage system that `ref` names.

    An alias names both models' holders of that alias. A version number names a ranker version, paired
    with the two-tower version it was trained on (its run's `two_tower_version` parameter), because the
    ranker learnt from that retriever's candidates.
    """
    ref = str(ref).strip()
    if not ref.isdigit():
        return resolve_version(state, TWO_TOWER_MODEL, ref), resolve_version(state, RANKER_MODEL, ref)
    ranker = model_version(state, RANKER_MODEL, ref)
    run_id = ranker.tags.get("run_id")
    params = configure(state).get_run(run_id).data.params if run_id else {}
    tower = params.get("two_tower_version")
    if tower is None:
        raise MissingStateError(
            f"{RANKER_MODEL} v{ref} does not record the two-tower version it was trained on"
        )
    return resolve_version(state, TWO_TOWER_MODEL, tower), str(ranker.version)
