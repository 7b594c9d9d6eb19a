"""Per-request work of the retrieval and ranking deployments, free of Ray so it can be tested directly.

Each stage holds a model and a feature reader built once per replica; a request only reads online
features and calls the model.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from recsys.vocab import GENRES
from serving.reranking import ItemInfo, ItemVectors, RerankConfig, genre_matrix, rerank
from serving.roles import FeatureReader, RankingModel, RetrievalModel
from serving.session import blend_affinity, session_match, session_profile

USER_KEY = "user_id"
ITEM_KEY = "item_id"
RETRIEVAL_FEATURE_SERVICE = "two_tower_v1"
UNKNOWN_USER = "unknown_user"
# Item features of the ranker's online read that re-ranking reuses (no second read).
GENRE_COLUMN = "item_genre_vector"
AGE_COLUMN = "item_age_days"
AFFINITY_COLUMN = "user_genre_affinity"
SESSION_COLD_START = "session"
# The request's surface (recsys.vocab.SURFACES or None), put in the candidates' details by the ingress.
SURFACE_DETAIL = "surface"
# The live session's item ids (POST /events and the request), for a ranker whose item-kNN signal reads them.
SESSION_ITEMS_DETAIL = "session_items"
# When ranking must have started (time.monotonic() seconds), put in the candidates' details by the
# ingress: ranking on the ingress's event loop skips a request whose deadline passed while it waited.
DEADLINE_DETAIL = "ranking_deadline"
# How many leading positions of the ranked list the answer can show (k, or exploration's pool when it is
# larger), put in the candidates' details by the ingress: re-ranking returns only those, and MMR picks
# no deeper than they need. Absent: the whole list is re-ranked and returned.
POSITIONS_DETAIL = "positions"
# The candidates' rows of the retrieval model's catalogue, row-aligned with their ids, put in the details
# by retrieval: re-ranking takes their embeddings by row (`ItemVectors.lookup` checks they name the ids).
CATALOG_ROWS_DETAIL = "catalog_rows"
# item id -> the ranker's calibrated P(engaged), put in the ranked candidates' details for the served log.
PROBABILITIES_DETAIL = "probabilities"
# Rankers whose `probabilities` read the very scores they serve: the LightGBM ranker's Platt map. A
# multi-task ranker's calibration reads the default surface's mix of its heads as P(satisfied), so its
# probability of another surface's score would be wrong; it logs none.
CALIBRATED_KINDS = frozenset({"lightgbm"})


class UnknownItemError(KeyError):
    """An item id the retrieval model's catalogue does not hold."""


class FeatureReadError(ValueError):
    """The online store answered with a frame that does not line up with the entities asked for."""


@dataclass(frozen=True)
class Candidates:
    """Items in the order a stage put them, with their scores and the version of the model that chose them.

    `fallback_reason` is set when the list is not the model's personal answer (for example popularity
    for an unknown user), and then it must not be re-ranked.
    """

    item_ids: list[str]
    scores: list[float]
    model_version: str
    fallback_reason: str | None = None
    # What the stages measured and passed on: `timings_ms`, `missing_features`, `session_profile`,
    # `user_overrides` (feature values the session changed), `debug` (a request flag), `surface` (the
    # request's, for the ranker) and, when debug is set, the feature values used. Not part of
    # equality: two lists with the same items are the same.
    details: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if len(self.item_ids) != len(self.scores):
            raise ValueError(f"{len(self.item_ids)} item ids but {len(self.scores)} scores")

    def top(self, k: int) -> Candidates:
        """The first `k` items."""
        details = self._cut_details(slice(k))
        return Candidates(
            self.item_ids[:k], self.scores[:k], self.model_version, self.fallback_reason, details
        )

    def with_details(self, **details: Any) -> Candidates:
        """The same list with `details` added to (or replacing entries of) its details."""
        merged = {**self.details, **details}
        return Candidates(self.item_ids, self.scores, self.model_version, self.fallback_reason, merged)

    def without(self, item_ids: frozenset[str]) -> Candidates:
        """The same list minus `item_ids` (items that must not be shown), order kept."""
        if not item_ids:
            return self
        keep = [j for j, item in enumerate(self.item_ids) if item not in item_ids]
        return Candidates(
            [self.item_ids[j] for j in keep],
            [self.scores[j] for j in keep],
            self.model_version,
            self.fallback_reason,
            self._cut_details(keep),
        )

    def _cut_details(self, kept: slice | list[int]) -> Mapping[str, Any]:
        """The details, with the catalogue rows (when retrieval put them there) cut as the ids are."""
        rows = self.details.get(CATALOG_ROWS_DETAIL)
        if rows is None:
            return self.details
        return {**self.details, CATALOG_ROWS_DETAIL: np.asarray(rows)[kept]}


def order_by_score(item_ids: list[str], scores: np.ndarray) -> tuple[list[str], list[float]]:
    """Items sorted by descending score; ties keep their input (retrieval) order.

    >>> order_by_score(["a", "b", "c"], np.array([0.1, 0.5, 0.1]))
    (['b', 'a', 'c'], [0.5, 0.1, 0.1])
    """
    if len(item_ids) != len(scores):
        raise ValueError(f"{len(item_ids)} item ids but {len(scores)} scores")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [item_ids[i] for i in order], [float(scores[i]) for i in order]


def calibrated_probabilities(
    model: Any, item_ids: Sequence[str], scores: np.ndarray
) -> dict[str, float] | None:
    """item id -> calibrated P(engaged) from the raw scores already computed (one vectorised sigmoid, no
    model call); None for a ranker without a calibration that reads its served scores."""
    if getattr(model, "kind", None) not in CALIBRATED_KINDS or not getattr(model, "calibrated", False):
        return None
    probabilities = np.asarray(model.probabilities(scores), dtype=np.float64)
    return dict(zip(item_ids, probabilities.tolist(), strict=True))


def probabilities_of(candidates: Candidates, item_ids: Sequence[str]) -> list[float] | None:
    """The calibrated probabilities of `item_ids` (a subset of the ranked `candidates`), in their order;
    None when ranking attached none or one of the items has none.

    >>> ranked = Candidates(["a", "b"], [2.0, 1.0], "4", details={"probabilities": {"a": 0.3, "b": 0.1}})
    >>> probabilities_of(ranked, ["b", "a"]), probabilities_of(ranked, ["c"])
    ([0.1, 0.3], None)
    """
    known: Mapping[str, float] | None = candidates.details.get(PROBABILITIES_DETAIL)
    if known is None or any(item not in known for item in item_ids):
        return None
    return [float(known[item]) for item in item_ids]


def item_info(
    items: pd.DataFrame, item_ids: list[str], vectors: ItemVectors | None, rows: np.ndarray | None = None
) -> ItemInfo:
    """What re-ranking needs from the candidates' online item features (and the retrieval embeddings, by
    the candidates' catalogue `rows` when retrieval gave them).

    Columns the read did not return are left out (None), which switches the rules using them off.

    >>> info = item_info(pd.DataFrame({"item_age_days": [3.0]}), ["a"], None)
    >>> info.categories is None, info.age_days.tolist()
    (True, [3.0])
    """
    categories = (
        genre_matrix(items[GENRE_COLUMN], len(items), len(GENRES)) if GENRE_COLUMN in items.columns else None
    )
    age = (
        pd.to_numeric(items[AGE_COLUMN], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if AGE_COLUMN in items.columns
        else None
    )
    embeddings = vectors.lookup(item_ids, rows) if vectors is not None else None
    return ItemInfo(embeddings=embeddings, categories=categories, age_days=age)


def split_features(frame: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame]:
    """Split one online read of (user, item) rows into the user's features and a per-item frame.

    User features are the `user_*` columns (the naming contract of the feature views); they are the same
    on every row, so the first row's values are taken. Everything else stays in the item frame.

    >>> frame = pd.DataFrame(
    ...     {"user_id": ["u", "u"], "item_id": ["a", "b"], "user_n": [3, 3], "item_n": [1, 2]}
    ... )
    >>> user, items = split_features(frame)
    >>> sorted(user), list(items.columns)
    (['user_id', 'user_n'], ['item_id', 'item_n'])
    """
    user_columns = [c for c in frame.columns if c.startswith("user_")]
    user = {c: frame[c].iloc[0] for c in user_columns} if len(frame) else {}
    return user, frame.drop(columns=user_columns).reset_index(drop=True)


def count_missing(frame: pd.DataFrame | Mapping[str, np.ndarray], columns: Sequence[str]) -> int:
    """Null feature values among `columns` of `frame`, a frame or its columns' arrays (the model
    substitutes its defaults for them).

    >>> count_missing(pd.DataFrame({"a": [1.0, None], "b": [None, None]}), ["a", "b"])
    3
    """
    # Column by column: selecting the columns as one frame first copies every one of them.
    return sum(int(pd.isna(np.asarray(frame[c])).sum()) for c in columns if c in frame)


def _plain(value: Any) -> Any:
    """A feature value as JSON-ready data (numpy arrays and scalars become lists and numbers)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def _unit(vector: np.ndarray) -> np.ndarray:
    unit: np.ndarray = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return unit


def _takes(function: Any, name: str) -> bool:
    """Whether `function` has a parameter `name` (False when its signature cannot be read)."""
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)


class RetrievalStage:
    """Candidate generation for one request: the user's online features, then the two-tower model.

    Args:
        model: The champion retrieval model.
        read_features: Online feature reads.
        feature_service: The feature service whose user features the model takes.
        session_weight: Share of the session's genre profile in the user's genre affinity.
    """

    def __init__(
        self,
        model: RetrievalModel,
        read_features: FeatureReader,
        feature_service: str = RETRIEVAL_FEATURE_SERVICE,
        session_weight: float = 0.5,
    ) -> None:
        self.model = model
        self._read = read_features
        self._service = feature_service
        self._session_weight = session_weight
        self._catalog_rows: dict[str, int] | None = None

    @property
    def version(self) -> str:
        return self.model.version

    def warm_up(self) -> None:
        """One throwaway read, so the first real request does not pay for opening the online store."""
        self._read(self._service, [{USER_KEY: "__warm_up__"}])

    def ready(self) -> str:
        """The model version, after one online read proves the store answers (raises otherwise)."""
        self._read(self._service, [{USER_KEY: "__ready__"}])
        return self.version

    def user_features(self, user_id: str) -> dict[str, Any]:
        frame = self._read(self._service, [{USER_KEY: user_id}])
        if len(frame) != 1:
            raise FeatureReadError(f"online store returned {len(frame)} rows for one user")
        return {str(key): value for key, value in frame.iloc[0].to_dict().items()}

    def session_profile(self, item_ids: Sequence[str]) -> np.ndarray | None:
        """Genre shares of the session's items, from their online item features (None without genres)."""
        if not item_ids:
            return None
        frame = self._read(self._service, [{ITEM_KEY: item_id} for item_id in item_ids])
        if GENRE_COLUMN not in frame.columns:
            return None
        return session_profile(genre_matrix(frame[GENRE_COLUMN], len(frame), len(GENRES)))

    def candidates(
        self, user_id: str, n: int, k: int, session_item_ids: Sequence[str] = (), debug: bool = False
    ) -> Candidates:
        """Up to `n` personal candidates; the `k` most popular items for a user the model does not know.

        Items of the live session move the user's genre affinity towards theirs before the user tower
        runs; a user the model does not know but whose session has genres gets candidates from the
        session alone (the user tower's shared unknown-user row with the session as affinity).
        """
        timings: dict[str, float] = {}
        started = time.perf_counter()
        profile = self.session_profile(session_item_ids)
        if session_item_ids:
            timings["session_features"] = _ms(started)
        details: dict[str, Any] = {"timings_ms": timings, "debug": debug}
        if session_item_ids:
            details[SESSION_ITEMS_DETAIL] = list(session_item_ids)
        if profile is not None:
            details["session_profile"] = profile.tolist()
        known = self.model.knows_user(user_id)
        if not known and profile is None:
            started = time.perf_counter()
            ids, scores = self.model.popular(k)
            timings["popularity"] = _ms(started)
            return Candidates(list(ids), [float(s) for s in scores], self.version, UNKNOWN_USER, details)
        started = time.perf_counter()
        features = self.user_features(user_id)
        timings["user_features"] = _ms(started)
        details["missing_features"] = sum(
            1 for key, value in features.items() if key != USER_KEY and _plain(value) is None
        )
        if profile is not None:
            blended = blend_affinity(_plain(features.get(AFFINITY_COLUMN)), profile, self._session_weight)
            features[AFFINITY_COLUMN] = blended.astype(np.float32)
            details["user_overrides"] = {AFFINITY_COLUMN: blended.tolist()}
        if not known:
            details["cold_start"] = SESSION_COLD_START
        if debug:
            details["user_features"] = {key: _plain(value) for key, value in features.items()}
        started = time.perf_counter()
        found = (
            self._session_retrieve(user_id, features, session_item_ids, n) if profile is not None else None
        )
        ids, scores, rows = found if found is not None else self._retrieve(user_id, features, n)
        timings["retrieve"] = _ms(started)
        if rows is not None:
            details[CATALOG_ROWS_DETAIL] = rows
        return Candidates(ids, [float(s) for s in scores], self.version, None, details)

    def _retrieve(
        self, user_id: str, features: dict[str, Any], n: int
    ) -> tuple[list[str], np.ndarray, np.ndarray | None]:
        """The model's top `n`, with their catalogue rows when the model gives them."""
        model: Any = self.model
        catalog: list[str] | None = getattr(model, "catalog", None)
        if catalog is None or not hasattr(model, "retrieve_rows"):
            ids, scores = model.retrieve(user_id, features, n)
            return list(ids), scores, None
        rows, scores = model.retrieve_rows(user_id, features, n)
        return list(map(catalog.__getitem__, rows.tolist())), scores, rows

    def _session_retrieve(
        self, user_id: str, features: dict[str, Any], session_item_ids: Sequence[str], n: int
    ) -> tuple[list[str], np.ndarray, np.ndarray] | None:
        """FAISS top-n (ids, scores, catalogue rows) for a query moved towards the session: the user
        embedding and the mean embedding of the session's items, each as a unit vector, mixed by the
        session weight.

        The genre affinity alone moves the user tower only as far as training taught it to; the items'
        own embeddings carry the session into retrieval whatever the model learnt. None when the model
        does not expose its towers and index (then `retrieve` runs on the blended features alone).
        """
        model: Any = self.model
        catalog: list[str] | None = getattr(model, "catalog", None)
        if catalog is None or not all(hasattr(model, a) for a in ("embed_users", "seen_items", "index")):
            return None
        if self._catalog_rows is None:
            self._catalog_rows = {item: row for row, item in enumerate(catalog)}
        rows = [self._catalog_rows[i] for i in session_item_ids if i in self._catalog_rows]
        if not rows:
            return None
        user = np.asarray(
            model.embed_users([user_id], pd.DataFrame([features]))[0], dtype=np.float64
        )  # (dim,)
        items = np.asarray(model.item_embeddings[rows], dtype=np.float64).mean(axis=0)  # (dim,)
        w = self._session_weight
        query = (1 - w) * _unit(user) + w * _unit(items)  # (dim,)
        banned = {self._catalog_rows[i] for i in model.seen_items(user_id) if i in self._catalog_rows}
        found, scores = model.index.search(query[None, :].astype(np.float32), n, exclude=[banned | set(rows)])
        keep = found[0] >= 0
        rows_found = found[0][keep]
        return list(map(catalog.__getitem__, rows_found.tolist())), scores[0][keep], rows_found

    def popular(self, n: int) -> Candidates:
        ids, scores = self.model.popular(n)
        return Candidates(list(ids), [float(s) for s in scores], self.version)

    def similar(self, item_id: str, k: int) -> Candidates:
        """The `k` items nearest to `item_id` in the retrieval model's item embedding ("more like this").

        Raises:
            UnknownItemError: the item is not in the model's catalogue.
        """
        catalog: list[str] | None = getattr(self.model, "catalog", None)
        embeddings: np.ndarray | None = getattr(self.model, "item_embeddings", None)
        index = getattr(self.model, "index", None)
        if catalog is None or embeddings is None or index is None:
            raise UnknownItemError(f"the retrieval model {self.version} has no item index")
        if self._catalog_rows is None:
            self._catalog_rows = {item: row for row, item in enumerate(catalog)}
        row = self._catalog_rows.get(item_id)
        if row is None:
            raise UnknownItemError(f"unknown item {item_id!r}")
        query = np.asarray(embeddings[row : row + 1], dtype=np.float32)  # (1, dim)
        rows, scores = index.search(query, k, exclude=[{row}])
        keep = rows[0] >= 0
        return Candidates(
            [catalog[int(r)] for r in rows[0][keep]], [float(s) for s in scores[0][keep]], self.version
        )


@dataclass(frozen=True)
class CandidateFeatures:
    """One request's online features: its user's (one value each) and its candidates' (one row each),
    and how many feature values the store did not have, counted per candidate row."""

    user: Mapping[str, Any]
    items: pd.DataFrame
    missing: int


class RankingStage:
    """Candidate scoring: one batched online read of all candidates (of one or many requests), the ranker.

    Args:
        model: The champion ranking model.
        read_features: Online feature reads.
        rerank_config: Re-ranking applied to the ranker's order; None returns the ranker's order as is.
        item_vectors: Item embeddings for MMR similarity; without them MMR compares genre vectors.
        session_boost: Re-ranking bonus, in scaled-relevance units, for an item fully matching the
            session's genre profile.
    """

    def __init__(
        self,
        model: RankingModel,
        read_features: FeatureReader,
        rerank_config: RerankConfig | None = None,
        item_vectors: ItemVectors | None = None,
        session_boost: float = 0.0,
    ) -> None:
        self.model = model
        self._read = read_features
        self._rerank = rerank_config
        self._vectors = item_vectors
        self._session_boost = session_boost
        # Rankers written before surfaces existed take three arguments: the surface goes only to those
        # that name it (a multi-task ranker mixes its heads by it, LightGBM ignores it).
        self._takes_surface = _takes(model.score, "surface")
        # Rankers that read the item-kNN signal score by user and candidate ids as well.
        self._takes_ids = _takes(model.score, "item_ids")

    @property
    def version(self) -> str:
        return self.model.version

    def warm_up(self) -> None:
        """One throwaway read, so the first real request does not pay for opening the online store."""
        self._read(self.model.feature_service, [{USER_KEY: "__warm_up__", ITEM_KEY: "__warm_up__"}])

    def rank(self, user_id: str, candidates: Candidates) -> Candidates:
        """The candidates re-ordered by the ranker's score, then re-ranked when a config is set."""
        result = self.rank_many([(user_id, candidates)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def rank_many(self, requests: Sequence[tuple[str, Candidates]]) -> list[Candidates | Exception]:
        """Rank several requests with one online read of all their candidates.

        A request whose scoring fails gets its exception in its place; the others are still answered.
        A failed read fails them all (it is the same store for everyone).
        """
        parts, read_ms = self._read_candidates(requests)
        out: list[Candidates | Exception] = []
        for (user_id, cands), part in zip(requests, parts, strict=True):
            try:
                out.append(self._rank_one(user_id, cands, part, read_ms, len(requests)))
            except Exception as err:  # one request's bad data must not fail its batch neighbours
                out.append(err)
        return out

    def score_many(self, requests: Sequence[tuple[str, Candidates]]) -> list[np.ndarray | Exception]:
        """The ranker's own scores of each request's candidates, in candidate order (no re-ranking).

        What shadow scoring compares; one online read for all requests, failures per request as in
        `rank_many`.
        """
        parts, _ = self._read_candidates(requests)
        out: list[np.ndarray | Exception] = []
        for (user_id, cands), part in zip(requests, parts, strict=True):
            try:
                out.append(self._scores(user_id, cands, part)[0] if cands.item_ids else np.zeros(0))
            except Exception as err:
                out.append(err)
        return out

    def _read_candidates(
        self, requests: Sequence[tuple[str, Candidates]]
    ) -> tuple[list[CandidateFeatures], float]:
        """Each request's user and candidate features from one online read, and the read's time (ms)."""
        started = time.perf_counter()
        parts = self._read_keyed(requests)
        if parts is None:
            parts = self._read_rows(requests)
        return parts, _ms(started)

    def _read_keyed(self, requests: Sequence[tuple[str, Candidates]]) -> list[CandidateFeatures] | None:
        """The user's features once per user and the candidates' once per candidate, when the reader can
        read join keys apart (the packed values); None when it cannot now."""
        read_keyed = getattr(self._read, "read_keyed", None)
        items = [item_id for _, cands in requests for item_id in cands.item_ids]
        if read_keyed is None or not items:
            return None
        users = list(dict.fromkeys(user_id for user_id, cands in requests if cands.item_ids))
        found = read_keyed(self.model.feature_service, {USER_KEY: users, ITEM_KEY: items})
        if found is None:
            return None
        user_values, item_values = found[USER_KEY], found[ITEM_KEY]
        n_users, n_items = len(user_values[USER_KEY]), len(item_values[ITEM_KEY])
        if n_users != len(users) or n_items != len(items):
            raise FeatureReadError(
                f"online store returned {n_users} user and {n_items} item rows "
                f"for {len(users)} users and {len(items)} candidates"
            )
        user_columns = [c for c in user_values if c != USER_KEY]
        item_columns = [c for c in item_values if c != ITEM_KEY]
        if not all(c.startswith("user_") for c in user_columns) or any(
            c.startswith("user_") for c in item_columns
        ):
            return None  # views off the naming contract: let `split_features` sort the row read
        row_of = {user_id: row for row, user_id in enumerate(users)}
        user_nulls = np.zeros(n_users, dtype=np.int64)  # each user's missing values
        for c in user_columns:
            user_nulls += pd.isna(user_values[c])
        parts: list[CandidateFeatures] = []
        offset = 0
        for user_id, cands in requests:
            n = len(cands.item_ids)
            if not n:
                parts.append(CandidateFeatures({}, pd.DataFrame(), 0))
                continue
            row = row_of[user_id]
            user = {c: values[row] for c, values in user_values.items()}
            # Slices of the read's columns (no copy): each request's frame is its own rows.
            items_part = {c: values[offset : offset + n] for c, values in item_values.items()}
            # Counted as the row-wise read counts them: the user's missing values once per candidate row.
            missing = count_missing(items_part, item_columns)
            missing += n * int(user_nulls[row])
            parts.append(CandidateFeatures(user, pd.DataFrame(items_part, copy=False), missing))
            offset += n
        return parts

    def _read_rows(self, requests: Sequence[tuple[str, Candidates]]) -> list[CandidateFeatures]:
        """One (user, item) row per candidate through the reader, split into user and item features."""
        rows = [
            {USER_KEY: user_id, ITEM_KEY: item_id}
            for user_id, cands in requests
            for item_id in cands.item_ids
        ]
        frame = self._read(self.model.feature_service, rows) if rows else pd.DataFrame()
        if len(frame) != len(rows):
            raise FeatureReadError(f"online store returned {len(frame)} rows for {len(rows)} candidates")
        parts: list[CandidateFeatures] = []
        offset = 0
        for _, cands in requests:
            n = len(cands.item_ids)
            part = frame.iloc[offset : offset + n].reset_index(drop=True)
            user, items = split_features(part)
            missing = count_missing(part, [c for c in part.columns if c not in ENTITY_COLUMNS]) if n else 0
            parts.append(CandidateFeatures(user, items, missing))
            offset += n
        return parts

    def _scores(
        self, user_id: str, candidates: Candidates, features: CandidateFeatures
    ) -> tuple[np.ndarray, dict[str, Any], pd.DataFrame]:
        """The ranker's scores of the candidates, the user features it saw and the item frame."""
        user, items = dict(features.user), features.items
        user.update(candidates.details.get("user_overrides", {}))
        extra: dict[str, Any] = {}
        if self._takes_surface:
            extra["surface"] = candidates.details.get(SURFACE_DETAIL)
        if self._takes_ids:
            extra["user_id"], extra["item_ids"] = user_id, candidates.item_ids
            extra["session_item_ids"] = candidates.details.get(SESSION_ITEMS_DETAIL, ())
        retrieval = np.asarray(candidates.scores, dtype=np.float32)
        scores = np.asarray(self.model.score(user, items, retrieval, **extra), dtype=np.float64)
        if scores.shape != (len(items),):
            raise ValueError(f"ranker returned scores of shape {scores.shape} for {len(items)} candidates")
        return scores, user, items

    def _rank_one(
        self,
        user_id: str,
        candidates: Candidates,
        features: CandidateFeatures,
        read_ms: float,
        batch: int,
    ) -> Candidates:
        timings = {"candidate_features": read_ms}
        details: dict[str, Any] = {"timings_ms": timings, "batch_size": batch}
        if not candidates.item_ids:
            return Candidates([], [], self.version, None, details)
        details["missing_features"] = features.missing
        started = time.perf_counter()
        scores, user, items = self._scores(user_id, candidates, features)
        probabilities = calibrated_probabilities(self.model, candidates.item_ids, scores)
        if probabilities is not None:
            details[PROBABILITIES_DETAIL] = probabilities
        timings["rank"] = _ms(started)
        started = time.perf_counter()
        if self._rerank is not None:
            rows = candidates.details.get(CATALOG_ROWS_DETAIL)
            info = item_info(items, candidates.item_ids, self._vectors, rows)
            bonus = self._session_bonus(candidates, info)
            shown = candidates.details.get(POSITIONS_DETAIL)
            ids, ordered = rerank(candidates.item_ids, scores, info, self._rerank, k=shown, bonus=bonus)
        else:
            ids, ordered = order_by_score(candidates.item_ids, scores)
        timings["rerank"] = _ms(started)
        if candidates.details.get("debug"):
            started = time.perf_counter()
            details["user_features"] = {key: _plain(value) for key, value in user.items()}
            by_id = items.set_index(ITEM_KEY, drop=False) if ITEM_KEY in items.columns else None
            details["item_features"] = (
                {i: {c: _plain(v) for c, v in by_id.loc[i].items()} for i in ids[:DEBUG_ITEMS]}
                if by_id is not None and by_id.index.is_unique
                else {}
            )
            timings["debug_details"] = _ms(started)
        return Candidates(ids, ordered, self.version, None, details)

    def _session_bonus(self, candidates: Candidates, info: ItemInfo) -> np.ndarray | None:
        profile = candidates.details.get("session_profile")
        if profile is None or info.categories is None or self._session_boost <= 0:
            return None
        return self._session_boost * session_match(info.categories, np.asarray(profile, dtype=np.float64))


ENTITY_COLUMNS = (USER_KEY, ITEM_KEY)
# Debug answers carry the feature values of this many top items (the whole candidate list is too long).
DEBUG_ITEMS = 100
