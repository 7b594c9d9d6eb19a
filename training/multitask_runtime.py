"""The multi-task ranker as evaluation and serving replicas load it: the same interface as the LightGBM
ranker (`training.runtime.RankingModel`), plus the request surface that picks the mix of the heads.

Artefacts: fp32 weights (`multitask_model.pt`), `multitask.json` (format version, model shape, surface
head weights, whether INT8 is served), `calibration.json` and `feature_names.json` (kind `multitask`).
INT8 is re-applied at load: dynamic quantisation of fixed weights is deterministic, so the served model is
the one whose AUC training measured, and no quantised tensors need to be unpickled.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from training.calibration import CALIBRATION_FILE, PlattCalibrator
from training.multitask import (
    MultiTaskModelConfig,
    SurfaceWeights,
    combine_heads,
    head_probabilities,
    score_log_odds,
)
from training.runtime import (
    MULTITASK_KIND,
    ArtifactError,
    RankingModel,
    ranker_artifact_calibrator,
    ranker_artifact_service,
    write_ranker_feature_names,
)

WEIGHTS_FILE = "multitask_model.pt"
SPEC_FILE = "multitask.json"
FORMAT_VERSION = 1


def write_multitask_artifacts(
    directory: Path,
    state_dict: dict[str, Any],
    model_config: MultiTaskModelConfig,
    surface_weights: SurfaceWeights,
    int8: bool,
    calibrator: PlattCalibrator,
    feature_service: str,
) -> None:
    """Write everything MultiTaskRankingModel needs into ``directory``."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state_dict), directory / WEIGHTS_FILE)
    spec = {
        "format_version": FORMAT_VERSION,
        "model_config": asdict(model_config),
        "surface_weights": {s: list(w) for s, w in surface_weights.weights.items()},
        "int8": bool(int8),
    }
    (directory / SPEC_FILE).write_text(json.dumps(spec))
    calibrator.save(directory / CALIBRATION_FILE)
    write_ranker_feature_names(directory, feature_service, MULTITASK_KIND)


def _read_spec(directory: Path) -> dict[str, Any]:
    path = directory / SPEC_FILE
    if not path.exists():
        raise ArtifactError(f"artefact file missing: {path}")
    try:
        spec = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"artefact file corrupt: {path} is not JSON ({err})") from None
    if not isinstance(spec, dict):
        raise ArtifactError(f"artefact file corrupt: {path} holds no object")
    if spec.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format version {spec.get('format_version')!r}; this code reads version "
            f"{FORMAT_VERSION}: retrain the ranker with `recsys train`"
        )
    return spec


class MultiTaskRankingModel(RankingModel):
    """Scores are the surface's weighted mix of the click and satisfaction probabilities (raw scores);
    ``probabilities`` maps the default surface's mix to calibrated P(satisfied) (Platt on its log-odds).

    Loading sets torch to one intra-op thread for the process, as a serving replica wants.
    """

    kind = MULTITASK_KIND

    def __init__(self, artifact_dir: Path, version: str) -> None:
        import torch

        from training.multitask import MultiTaskRanker, quantise_int8

        self.artifact_dir = Path(artifact_dir)
        self.version = version
        self.feature_service = ranker_artifact_service(self.artifact_dir)
        self.item_knn = None  # it reads its feature service only (RankerConfig.item_knn)
        spec = _read_spec(self.artifact_dir)
        try:
            config = spec["model_config"]
            self.model_config = MultiTaskModelConfig(
                **{**config, "hidden_sizes": tuple(config["hidden_sizes"])}
            )
            self.surface_weights = SurfaceWeights(
                {str(s): (float(w[0]), float(w[1])) for s, w in spec["surface_weights"].items()}
            )
            self.int8 = bool(spec["int8"])
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise ArtifactError(f"artefact file corrupt: {self.artifact_dir / SPEC_FILE} ({err!r})") from None
        weights_file = self.artifact_dir / WEIGHTS_FILE
        if not weights_file.exists():
            raise ArtifactError(f"artefact file missing: {weights_file}")
        model = MultiTaskRanker(self.model_config)
        try:
            model.load_state_dict(torch.load(weights_file, weights_only=True))
        except (
            RuntimeError,
            OSError,
            pickle.UnpicklingError,
            zipfile.BadZipFile,
            EOFError,
            ValueError,
        ) as err:
            raise ArtifactError(
                f"artefact file corrupt: {weights_file} ({str(err).splitlines()[0]})"
            ) from None
        model.eval()
        self._model = quantise_int8(model) if self.int8 else model
        # As LightGBM's num_threads=1: a replica scores a few hundred rows, where a second intra-op
        # thread costs more than it saves (tens of times more on shared, busy cores).
        if torch.get_num_threads() > 1:
            torch.set_num_threads(1)
        self.calibrator = ranker_artifact_calibrator(self.artifact_dir)

    def probabilities(self, raw_scores: np.ndarray) -> np.ndarray:
        """Calibrated P(satisfied) of default-surface scores (the calibrator reads their log-odds)."""
        return super().probabilities(score_log_odds(raw_scores))

    def head_probabilities(self, matrix: np.ndarray) -> np.ndarray:
        """(n, n_tasks) click and satisfaction probabilities of rows built by build_ranker_matrix."""
        return head_probabilities(self._model, np.asarray(matrix, dtype=np.float32))

    def predict_matrix(self, matrix: np.ndarray, surface: str | None = None) -> np.ndarray:
        """Raw scores: the heads' probabilities mixed by ``surface``'s weights (default when None/unknown)."""
        if len(matrix) == 0:
            return np.zeros(0, dtype=np.float64)
        return combine_heads(self.head_probabilities(matrix), self.surface_weights.of(surface))
