"""Trained models as loaded by evaluation and by each serving replica: artefacts in, scores out.

A model's artefact directory is self-contained (weights, id maps, item embeddings, FAISS index, seen
items, popularity fallback, feature names), so a replica loads it once and never reads MLflow per request.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.config import IndexConfig
from recsys.vocab import GENRES
from training.calibration import CALIBRATION_FILE, CalibrationError, PlattCalibrator
from training.index import ItemIndex
from training.item_knn_signal import ITEM_KNN_FILE, ItemKNNSignal, ItemKNNSignalError
from training.ranker_features import (
    RANKER_FEATURE_SERVICE,
    RankerFeatureError,
    build_ranker_matrix,
    ranker_columns,
)
from training.two_tower import TwoTowerModelConfig, item_dense_features, pad_history, user_dense_features

TWO_TOWER_FEATURE_SERVICE = "two_tower_v1"
TWO_TOWER_USER_FEATURES: tuple[str, ...] = ("user_genre_affinity", "user_n_events")
TWO_TOWER_ITEM_FEATURES: tuple[str, ...] = ("item_genre_vector", "item_n_events_365d", "item_age_days")
# The item tower's content input (recsys/features/content.py), read as a service like every feature.
ITEM_CONTENT_FEATURE_SERVICE = "item_content_v1"
ITEM_CONTENT_FEATURE = "item_content_embedding"
ITEM_CONTENT_TS = "item_content__feature_ts"
RANKER_MODEL_FILE = "ranker.txt"
# Each user's last positive items as of the model's data: the history input of a served user tower.
HISTORY_FILE = "history.json"
# A ranker's artefacts record its kind (feature_names.json); artefacts without one are LightGBM.
LIGHTGBM_KIND = "lightgbm"
MULTITASK_KIND = "multitask"


class ArtifactError(ValueError):
    """An artefact directory that is missing files or was written for other feature names."""


def _genre_matrix(values: Iterable[Any], n: int) -> np.ndarray:
    """A column of genre lists as an (n, n_genres) matrix; missing rows are zeros."""
    out = np.zeros((n, len(GENRES)), dtype=np.float32)
    for row, value in enumerate(values):
        if value is not None and not (isinstance(value, float) and np.isnan(value)):
            out[row] = np.asarray(value, dtype=np.float32)
    return out


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame.columns:
        return np.full(len(frame), np.nan, dtype=np.float32)
    values: np.ndarray = pd.to_numeric(frame[name], errors="coerce").to_numpy(
        dtype=np.float32, na_value=np.nan
    )
    return values


def user_dense_from_frame(frame: pd.DataFrame) -> np.ndarray:
    """The user tower's dense input from rows of `two_tower_v1` user features."""
    genres = _genre_matrix(frame.get("user_genre_affinity", pd.Series([None] * len(frame))), len(frame))
    return user_dense_features(genres, _column(frame, "user_n_events"))


def item_dense_from_frame(frame: pd.DataFrame, content: np.ndarray | None = None) -> np.ndarray:
    """The item tower's dense input from rows of `two_tower_v1` item features, and the rows' content
    embeddings (from :meth:`ItemContent.rows`) for a model that reads them."""
    genres = _genre_matrix(frame.get("item_genre_vector", pd.Series([None] * len(frame))), len(frame))
    return item_dense_features(
        genres, _column(frame, "item_n_events_365d"), _column(frame, "item_age_days"), content
    )


def _epoch_us(times: pd.Series) -> np.ndarray:
    """UTC times as int64 microseconds since the epoch."""
    return np.asarray((times - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1), dtype=np.int64)


class ItemContent:
    """Item content embeddings by item id, each with the time it became known (`item_content_v1`).

    Content does not change, so a model keeps the table of its catalogue beside its weights and looks
    vectors up by id; an item it lacks is read from the features given (a new item), else it is zeros.
    """

    VECTORS_FILE = "item_content.npy"
    IDS_FILE = "item_content_ids.json"
    TIMES_FILE = "item_content_ts.npy"

    def __init__(self, item_ids: list[str], vectors: np.ndarray, known_at_us: np.ndarray) -> None:
        if not (len(item_ids) == len(vectors) == len(known_at_us)):
            raise ValueError("item content ids, vectors and times must have the same length")
        self.item_ids = [str(i) for i in item_ids]
        self.vectors = np.asarray(vectors, dtype=np.float32).reshape(len(item_ids), -1)  # (n, dim)
        self.known_at_us = np.asarray(known_at_us, dtype=np.int64)  # (n,) microseconds since the epoch
        self._row = {item: row for row, item in enumerate(self.item_ids)}

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @classmethod
    def from_rows(cls, rows: pd.DataFrame) -> ItemContent:
        """From `item_content_v1` rows read with ``historical_features`` (rows without a vector dropped)."""
        present = rows[rows[ITEM_CONTENT_FEATURE].map(lambda v: v is not None and np.ndim(v) == 1)]
        present = present.drop_duplicates("item_id", keep="last")
        if present.empty:
            return cls([], np.zeros((0, 0), np.float32), np.zeros(0, np.int64))
        known = pd.Series(pd.to_datetime(present[ITEM_CONTENT_TS], utc=True))
        return cls(
            list(present["item_id"].astype(str)),
            np.stack([np.asarray(v, dtype=np.float32) for v in present[ITEM_CONTENT_FEATURE]]),
            _epoch_us(known),
        )

    def rows(
        self, item_ids: Iterable[str], as_of: pd.Series | None = None, features: pd.DataFrame | None = None
    ) -> np.ndarray:
        """(n, dim) content per item, zeros where there is none (or none yet at ``as_of``, per row).

        Args:
            item_ids: the items, in order.
            as_of: per row, the moment judged: content that became known later is left out (no leakage).
            features: rows aligned with ``item_ids``; their ``item_content_embedding`` serves items this
                table lacks.
        """
        ids = [str(i) for i in item_ids]
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        rows = np.array([self._row.get(i, -1) for i in ids], dtype=np.int64)
        known = rows >= 0
        if as_of is not None and known.any():
            when_us = _epoch_us(pd.Series(pd.to_datetime(as_of, utc=True)))
            known &= np.where(known, self.known_at_us[np.maximum(rows, 0)] <= when_us, False)
        out[known] = self.vectors[rows[known]]
        if features is not None and ITEM_CONTENT_FEATURE in features.columns:
            for j in np.flatnonzero(rows < 0):
                value = features[ITEM_CONTENT_FEATURE].iloc[j]
                if value is not None and np.ndim(value) == 1 and len(value) == self.dim:
                    out[j] = np.nan_to_num(np.asarray(value, dtype=np.float32))
        return out

    def save(self, directory: Path) -> None:
        np.save(directory / self.VECTORS_FILE, self.vectors)
        np.save(directory / self.TIMES_FILE, self.known_at_us)
        (directory / self.IDS_FILE).write_text(json.dumps(self.item_ids))

    @classmethod
    def load(cls, directory: Path) -> ItemContent:
        ids = _read_json(directory / cls.IDS_FILE)
        return cls(ids, np.load(directory / cls.VECTORS_FILE), np.load(directory / cls.TIMES_FILE))


def write_retrieval_artifacts(
    directory: Path,
    state_dict: Mapping[str, Any],
    model_config: TwoTowerModelConfig,
    user_ids: list[str],
    item_ids: list[str],
    catalog_item_ids: list[str],
    item_embeddings: np.ndarray,
    seen: Mapping[str, list[str]],
    popularity: list[tuple[str, float]],
    index_config: IndexConfig | None = None,
    content: ItemContent | None = None,
    history: Mapping[str, list[str]] | None = None,
) -> None:
    """Write everything RetrievalModel.load needs into `directory`.

    Args:
        user_ids, item_ids: the ID-table vocabularies; id i is row i + 1 (row 0 is unknown).
        catalog_item_ids: every item the index can return, aligned with `item_embeddings` rows.
        seen: items each user has interacted with, never retrieved again for that user.
        popularity: (item_id, score) best first, the fallback for users retrieval cannot serve.
        content: the content embeddings the item tower reads (a model with ``content_dim`` > 0).
        history: each user's last positive items, oldest first, as of the data the model is served
            after (a model with ``history_length`` > 0; `training.examples.history_at_cut`).
    """
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state_dict), directory / "model.pt")
    (directory / "model_config.json").write_text(json.dumps(asdict(model_config)))
    (directory / "user_ids.json").write_text(json.dumps(user_ids))
    (directory / "item_ids.json").write_text(json.dumps(item_ids))
    (directory / "catalog_item_ids.json").write_text(json.dumps(catalog_item_ids))
    np.save(directory / "item_embeddings.npy", np.asarray(item_embeddings, dtype=np.float32))
    ItemIndex.build(item_embeddings, np.arange(len(catalog_item_ids)), index_config).save(directory / "index")
    (directory / "seen.json").write_text(json.dumps({u: sorted(items) for u, items in seen.items()}))
    (directory / "popularity.json").write_text(json.dumps([[i, float(s)] for i, s in popularity]))
    names: dict[str, Any] = {
        "feature_service": TWO_TOWER_FEATURE_SERVICE,
        "user": list(TWO_TOWER_USER_FEATURES),
        "item": list(TWO_TOWER_ITEM_FEATURES),
    }
    if model_config.content_dim:
        if content is None or content.dim != model_config.content_dim:
            raise ArtifactError(f"a model with content_dim={model_config.content_dim} needs its item content")
        content.save(directory)
        names["content_service"] = ITEM_CONTENT_FEATURE_SERVICE
    if model_config.history_length:
        if history is None:
            raise ArtifactError(f"a model with history_length={model_config.history_length} needs histories")
        n = model_config.history_length
        (directory / HISTORY_FILE).write_text(json.dumps({u: list(h)[-n:] for u, h in history.items() if h}))
    (directory / "feature_names.json").write_text(json.dumps(names))


def _model_config(values: Any) -> TwoTowerModelConfig:
    """model_config.json as a config; fields it lacks (written before they existed) keep their defaults,
    which reproduce the model of that time."""
    try:
        return TwoTowerModelConfig(**values)
    except TypeError as err:
        raise ArtifactError(f"model_config.json does not describe a two-tower model: {err}") from None


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise ArtifactError(f"artefact file missing: {path}")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"artefact file corrupt: {path} is not JSON ({err})") from None


def read_two_tower_weights(
    directory: Path,
) -> tuple[dict[str, Any], TwoTowerModelConfig, list[str], list[str]]:
    """(state dict, model config, user ids, item ids) of retrieval artefacts: what a fine-tune starts from."""
    import torch

    model_config = _model_config(_read_json(directory / "model_config.json"))
    weights = torch.load(directory / "model.pt", weights_only=True)
    users, items = _read_json(directory / "user_ids.json"), _read_json(directory / "item_ids.json")
    return weights, model_config, [str(u) for u in users], [str(i) for i in items]


class RetrievalModel:
    """The two-tower retriever: user tower on request, item side precomputed in a FAISS index."""

    feature_service = TWO_TOWER_FEATURE_SERVICE

    def __init__(self, artifact_dir: Path, version: str) -> None:
        import torch

        from training.two_tower import TwoTowerModel

        self.artifact_dir = Path(artifact_dir)
        self.version = version
        names = _read_json(self.artifact_dir / "feature_names.json")
        if names.get("feature_service") != TWO_TOWER_FEATURE_SERVICE:
            raise ArtifactError(f"retrieval artefacts were built for {names.get('feature_service')!r}")
        self.model_config = _model_config(_read_json(self.artifact_dir / "model_config.json"))
        self._model = TwoTowerModel(self.model_config)
        try:
            self._model.load_state_dict(torch.load(self.artifact_dir / "model.pt", weights_only=True))
        except RuntimeError as err:  # missing or unexpected tensors: weights of another model shape
            raise ArtifactError(f"two-tower weights do not fit model_config.json: {err}") from None
        self._model.eval()
        self._user_index = {u: i + 1 for i, u in enumerate(_read_json(self.artifact_dir / "user_ids.json"))}
        self._item_index = {u: i + 1 for i, u in enumerate(_read_json(self.artifact_dir / "item_ids.json"))}
        self.catalog: list[str] = _read_json(self.artifact_dir / "catalog_item_ids.json")
        self._catalog_row = {item: row for row, item in enumerate(self.catalog)}
        self.item_embeddings = np.load(self.artifact_dir / "item_embeddings.npy")
        self.index = ItemIndex.load(self.artifact_dir / "index")
        self._seen = {u: set(items) for u, items in _read_json(self.artifact_dir / "seen.json").items()}
        self.content = ItemContent.load(self.artifact_dir) if self.model_config.content_dim else None
        # Artefacts from before the history input have none and need none (history_length 0).
        self._history: dict[str, list[str]] = (
            _read_json(self.artifact_dir / HISTORY_FILE) if self.model_config.history_length else {}
        )
        popularity = _read_json(self.artifact_dir / "popularity.json")
        self._popular_ids = [str(i) for i, _ in popularity]
        self._popular_scores = np.array([s for _, s in popularity], dtype=np.float32)

    @classmethod
    def load(cls, artifact_dir: Path, version: str) -> RetrievalModel:
        return cls(artifact_dir, version)

    def knows_user(self, user_id: str) -> bool:
        """Whether the user has a learned ID embedding (others are served by features or popularity)."""
        return user_id in self._user_index

    def seen_items(self, user_id: str) -> set[str]:
        return self._seen.get(user_id, set())

    @property
    def history_length(self) -> int:
        """How many recent positive items the user tower reads (0: none)."""
        return self.model_config.history_length

    def recent_items(self, user_id: str) -> list[str]:
        """The user's last positive items as of the model's data, oldest first (the served history)."""
        return list(self._history.get(user_id, []))

    def embed_users(
        self,
        user_ids: list[str],
        features: pd.DataFrame,
        histories: Sequence[Sequence[str]] | None = None,
    ) -> np.ndarray:
        """(n, dim) user embeddings from ids and rows of user features (same order).

        Args:
            histories: per user, the recent positive items (oldest first) the user tower reads, as of
                the moment judged; None takes each user's history as of the model's data
                (:meth:`recent_items`), which is what serving has. Offline evaluation passes the history
                before its window, since the stored one may hold the window itself.
        """
        import torch

        ids = torch.as_tensor([self._user_index.get(u, 0) for u in user_ids], dtype=torch.long)
        history = None
        if self.history_length:
            chosen = histories if histories is not None else [self.recent_items(u) for u in user_ids]
            if len(chosen) != len(user_ids):
                raise ValueError(f"{len(chosen)} histories for {len(user_ids)} users")
            rows = [[self._item_index.get(str(i), 0) for i in h] for h in chosen]
            history = torch.as_tensor(pad_history(rows, self.history_length))
        with torch.no_grad():
            emb = self._model.user_embedding(ids, torch.as_tensor(user_dense_from_frame(features)), history)
        return np.asarray(emb.numpy(), dtype=np.float32)

    def embed_items(self, item_ids: list[str], features: pd.DataFrame) -> np.ndarray:
        """(n, dim) item embeddings from ids and rows of item features (same order)."""
        import torch

        ids = torch.as_tensor([self._item_index.get(i, 0) for i in item_ids], dtype=torch.long)
        # Items unseen in training share the unknown ID row: their content tells them apart.
        content = None if self.content is None else self.content.rows(item_ids, features=features)
        with torch.no_grad():
            emb = self._model.item_tower(ids, torch.as_tensor(item_dense_from_frame(features, content)))
        return np.asarray(emb.numpy(), dtype=np.float32)

    def retrieve(
        self, user_id: str, user_features: Mapping[str, Any], n: int, exclude: set[str] | None = None
    ) -> tuple[list[str], np.ndarray]:
        """Top-n catalogue items for the user, never one the user has already seen.

        Args:
            user_id: may be unknown; its ID embedding is then the shared unknown row.
            user_features: the user's `two_tower_v1` feature values (missing ones count as zero).
            n: how many items.
            exclude: further item ids to leave out (e.g. just shown).
        """
        rows, scores = self.retrieve_rows(user_id, user_features, n, exclude)
        return list(map(self.catalog.__getitem__, rows.tolist())), scores

    def retrieve_rows(
        self, user_id: str, user_features: Mapping[str, Any], n: int, exclude: set[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`retrieve`'s items as their rows of `catalog` (and of `item_embeddings`), and their scores."""
        query = self.embed_users([user_id], pd.DataFrame([dict(user_features)]))  # (1, dim)
        banned = self.seen_items(user_id) | (exclude or set())
        rows = {self._catalog_row[i] for i in banned if i in self._catalog_row}
        found, scores = self.index.search(query, n, exclude=[rows])
        keep = found[0] >= 0
        return found[0][keep], scores[0][keep]

    def add_items(self, item_ids: list[str], features: pd.DataFrame) -> int:
        """Make new catalogue items retrievable without a rebuild; returns how many were new.

        Items unseen in training have no ID embedding: the item tower places them by their features
        alone, so they are found by users whose taste matches those features.
        """
        new = [i for i in dict.fromkeys(item_ids) if i not in self._catalog_row]
        if not new:
            return 0
        rows = features.reset_index(drop=True)
        position = {item: j for j, item in enumerate(item_ids)}
        embeddings = self.embed_items(new, rows.iloc[[position[i] for i in new]].reset_index(drop=True))
        start = len(self.catalog)
        self.index.add(embeddings, np.arange(start, start + len(new)))
        self.catalog.extend(new)
        self._catalog_row.update({item: start + j for j, item in enumerate(new)})
        self.item_embeddings = np.concatenate([self.item_embeddings, embeddings])
        return len(new)

    def popular(self, n: int, exclude: set[str] | None = None) -> tuple[list[str], np.ndarray]:
        """The n most popular items (the fallback), skipping `exclude`."""
        if not exclude:
            return self._popular_ids[:n], self._popular_scores[:n]
        keep = [j for j, i in enumerate(self._popular_ids) if i not in exclude][:n]
        return [self._popular_ids[j] for j in keep], self._popular_scores[keep]


class RankingModel:
    """The LightGBM ranker over retrieval candidates: raw scores to order them, calibrated probabilities
    (`probabilities`) wherever a score is read as a number (the gate's PSI, reliability, blending).

    Artefacts written before rankers were calibrated (no calibration.json) still load and still rank;
    asking them for probabilities raises ArtifactError, since a raw lambdarank score is no probability.
    The feature service is the one recorded at training time: serving and evaluation read that one.
    """

    kind = LIGHTGBM_KIND

    def __init__(self, artifact_dir: Path, version: str) -> None:
        import lightgbm as lgb

        self.artifact_dir = Path(artifact_dir)
        self.version = version
        self.feature_service = ranker_artifact_service(self.artifact_dir)
        model_file = self.artifact_dir / RANKER_MODEL_FILE
        if not model_file.exists():
            raise ArtifactError(f"artefact file missing: {model_file}")
        self._booster = lgb.Booster(model_file=str(model_file))
        self.calibrator = ranker_artifact_calibrator(self.artifact_dir)
        self.item_knn = ranker_artifact_item_knn(self.artifact_dir)

    @classmethod
    def load(cls, artifact_dir: Path, version: str) -> RankingModel:
        """The ranker in ``artifact_dir``, of the kind its feature_names.json records (LightGBM if none)."""
        names = _read_json(Path(artifact_dir) / "feature_names.json")
        kind = names.get("kind", LIGHTGBM_KIND) if isinstance(names, dict) else None
        if kind == LIGHTGBM_KIND:
            return RankingModel(artifact_dir, version)
        if kind == MULTITASK_KIND:
            from training.multitask_runtime import MultiTaskRankingModel

            return MultiTaskRankingModel(artifact_dir, version)
        raise ArtifactError(f"unknown ranker kind {kind!r} in {artifact_dir}")

    @property
    def calibrated(self) -> bool:
        return self.calibrator is not None

    def predict_matrix(self, matrix: np.ndarray, surface: str | None = None) -> np.ndarray:
        """Raw scores for rows already built by build_ranker_matrix (batch evaluation); one LightGBM model
        serves every surface, so ``surface`` changes nothing here."""
        if len(matrix) == 0:
            return np.zeros(0, dtype=np.float64)
        return np.asarray(self._booster.predict(matrix, num_threads=1), dtype=np.float64)

    def probabilities(self, raw_scores: np.ndarray) -> np.ndarray:
        """P(engaged) of candidates from their raw scores (same order, monotone in the score).

        Raises:
            ArtifactError: the artefacts hold no calibration (trained before rankers were calibrated).
        """
        if self.calibrator is None:
            raise ArtifactError(
                f"ranker v{self.version} has no {CALIBRATION_FILE} (trained before rankers were calibrated): "
                "retrain it with `recsys train` to get calibrated probabilities"
            )
        return self.calibrator.probabilities(raw_scores)

    def predict_matrix_with_probabilities(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(raw scores, calibrated probabilities) for rows built by build_ranker_matrix."""
        raw = self.predict_matrix(matrix)
        return raw, self.probabilities(raw)

    def as_of(self, events: pd.DataFrame) -> RankingModel:
        """This ranker with its item-kNN signal refitted on ``events`` (the history before a judged
        window), so an offline replay never scores with neighbours or likes from the window itself."""
        if self.item_knn is None:
            return self
        twin = copy.copy(self)
        twin.item_knn = ItemKNNSignal.fit(events, self.item_knn.n_neighbours)
        return twin

    def score(
        self,
        user_features: Mapping[str, Any],
        item_features: pd.DataFrame,
        retrieval_scores: np.ndarray,
        surface: str | None = None,
        user_id: str | None = None,
        item_ids: Sequence[str] | None = None,
        session_item_ids: Sequence[str] = (),
    ) -> np.ndarray:
        """(n_candidates,) raw ranking scores, higher is better, in the order of `item_features` rows.

        ``surface`` is the request's (recsys.vocab.SURFACES); a multi-task ranker mixes its heads by it.
        ``user_id`` and ``item_ids`` (the candidates, in row order) feed the item-kNN signal of a ranker
        trained with it; ``session_item_ids`` (the live session's items) join the user's liked items there.

        Raises:
            ValueError: the ranker reads the item-kNN signal and the ids are not given.
        """
        knn = None
        if self.item_knn is not None:
            if item_ids is None:
                raise ValueError(
                    f"ranker v{self.version} reads the item-kNN signal: pass the candidates' ids"
                )
            knn = self.item_knn.scores(user_id, item_ids, also_liked=session_item_ids)
        matrix = build_ranker_matrix(
            user_features, item_features, retrieval_scores, self.feature_service, item_knn_scores=knn
        )
        return self.predict_matrix(matrix, surface)


def ranker_artifact_service(directory: Path) -> str:
    """The feature service a ranker's artefacts were trained on, checked against its feature names."""
    names = _read_json(directory / "feature_names.json")
    if not isinstance(names, dict):
        raise ArtifactError(f"artefact file corrupt: {directory / 'feature_names.json'} holds no object")
    service = str(names.get("feature_service"))
    try:
        expected = ranker_columns(service, bool(names.get("item_knn", False)))
    except RankerFeatureError as err:
        raise ArtifactError(f"ranker artefacts were built for {err}") from None
    if tuple(names.get("features", ())) != expected:
        raise ArtifactError(f"ranker artefacts were trained on other features than {service} takes")
    return service


def ranker_artifact_calibrator(directory: Path) -> PlattCalibrator | None:
    """The ranker's calibration, or None for artefacts written before rankers were calibrated."""
    calibration_file = directory / CALIBRATION_FILE
    if not calibration_file.exists():
        return None
    try:
        return PlattCalibrator.load(calibration_file)
    except CalibrationError as err:
        raise ArtifactError(f"ranker calibration unreadable: {err}") from None


def ranker_artifact_item_knn(directory: Path) -> ItemKNNSignal | None:
    """The ranker's item-kNN signal when its feature names say it was trained with one, else None."""
    names = _read_json(directory / "feature_names.json")
    if not isinstance(names, dict) or not names.get("item_knn", False):
        return None
    try:
        return ItemKNNSignal.load(directory / ITEM_KNN_FILE)
    except ItemKNNSignalError as err:
        raise ArtifactError(str(err)) from None


def write_ranker_artifacts(
    directory: Path,
    booster: Any,
    calibrator: PlattCalibrator,
    feature_service: str = RANKER_FEATURE_SERVICE,
    item_knn: ItemKNNSignal | None = None,
) -> None:
    """Write the LightGBM model (at its best iteration), its calibration, the item-kNN signal serving
    scores with (for a ranker trained with one), and the feature service and feature names it expects."""
    directory.mkdir(parents=True, exist_ok=True)
    booster.save_model(str(directory / RANKER_MODEL_FILE), num_iteration=booster.best_iteration or None)
    calibrator.save(directory / CALIBRATION_FILE)
    if item_knn is not None:
        item_knn.save(directory / ITEM_KNN_FILE)
    write_ranker_feature_names(directory, feature_service, LIGHTGBM_KIND, item_knn is not None)


def write_ranker_feature_names(
    directory: Path, feature_service: str, kind: str, item_knn: bool = False
) -> None:
    """feature_names.json of a ranker: its feature service, the matrix columns, whether the item-kNN
    columns are among them, and the model kind."""
    names = {
        "feature_service": feature_service,
        "features": list(ranker_columns(feature_service, item_knn)),
        "item_knn": item_knn,
        "kind": kind,
    }
    (directory / "feature_names.json").write_text(json.dumps(names))
