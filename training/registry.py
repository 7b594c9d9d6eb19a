"""MLflow tracking and registry: log a trained model with its artefacts, register it, move `champion`.

The tracking store and the artefact root are set explicitly to the state directory, never MLflow's
cwd defaults. Models are logged as pyfunc models carrying their artefact directory, so the registry
holds a loadable model, and `load_champion` hands back that directory for RetrievalModel/RankingModel.
"""

from __future__ import annotations

import subprocess
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recsys.state import MissingStateError, StateDir

EXPERIMENT = "recsys"
TWO_TOWER_MODEL = "recsys-two-tower"
RANKER_MODEL = "recsys-ranker"
CHAMPION = "champion"
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
) -> tuple[str, str]:
    """Log one model run (params, metrics, tags, pyfunc with artefacts), register it, alias champion.

    Args:
        model_name: registered model name (TWO_TOWER_MODEL or RANKER_MODEL).
        kind: "retrieval" or "ranking": which runtime class the pyfunc loads.
        artifact_dir: the directory written by training.runtime.write_*_artifacts.
        tags: at least dataset_version and feature_service.

    Returns:
        (run_id, registered version).
    """
    import mlflow

    client = configure(state)
    with mlflow.start_run(run_name=model_name) as run:
        mlflow.log_params(dict(params))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
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
        client.set_registered_model_alias(model_name, CHAMPION, version.version)
        client.set_model_version_tag(model_name, version.version, "run_id", run.info.run_id)
    return run.info.run_id, str(version.version)


def champion_version(state: StateDir, model_name: str) -> Any | None:
    """The registry entry behind `champion`, or None when there is none yet."""
    import mlflow

    if not (state.mlflow / "mlflow.db").exists():
        return None
    client = configure(state)
    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None


def load_champion(state: StateDir, model_name: str) -> tuple[Path, str]:
    """Resolve `champion` to (local artefact directory, registered version); call once per process."""
    import mlflow

    entry = champion_version(state, model_name)
    if entry is None:
        raise MissingStateError(f"no champion for {model_name!r} in {state.mlflow}: run `recsys train` first")
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
