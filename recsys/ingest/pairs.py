"""Training pairs for the ranker: labelled positives with hard and sampled negatives, and their weights.

For each user, every positive (one per user, item and session, by the ``target`` label) gets
``negatives_per_positive`` negatives:

* hard negatives first, up to ``hard_share`` of them: the user's own logged negatives (shown and not
  engaged, or skipped), drawn without replacement and weighted ``hard_weight``;
* the rest sampled from the catalogue, uniformly or by popularity (positive count ** exponent), never an
  item the user engaged with, each stamped with the time of one of the user's positives so that its
  features can be read at that time.

Logged negatives are down-sampled (kept / available is ``hard_negative_rate``), which inflates predicted
probabilities: a model trained on the pairs gives p, and :func:`corrected_probability` turns it back into
the probability under the logged distribution. The rate goes into the pairs' manifest for that reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from recsys.ingest.labels import NEGATIVE, POSITIVE, label_events

if TYPE_CHECKING:
    from recsys.config import PipelineConfig

KINDS: tuple[str, ...] = ("positive", "hard", "sampled")
PAIRS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("label", pa.int8(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("weight", pa.float32(), nullable=False),
    ]
)


class PairsConfig(BaseModel):
    """How training pairs are drawn (unknown keys are errors)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: Literal["click", "satisfaction"] = "click"
    negatives_per_positive: int = Field(default=4, ge=1, le=100)
    # At most this share of each positive's negatives comes from the user's logged negatives.
    hard_share: float = Field(default=0.5, ge=0, le=1)
    hard_weight: float = Field(default=2.0, gt=0)
    sampler: Literal["uniform", "popularity"] = "popularity"
    popularity_exponent: float = Field(default=0.75, ge=0)
    seed: int = 0


@dataclass(frozen=True)
class TrainingPairs:
    """The pairs (``PAIRS_SCHEMA`` columns) and what drawing them did (counts and rates)."""

    pairs: pd.DataFrame
    stats: dict[str, Any]


def corrected_probability(p: np.ndarray | float, negative_rate: float) -> np.ndarray:
    """A probability predicted by a model trained with negatives kept at ``negative_rate``, corrected
    back to the full data: the odds shrink by the rate.

    >>> round(float(corrected_probability(0.5, 0.1)), 4)
    0.0909
    >>> float(corrected_probability(0.3, 1.0))
    0.3
    """
    if not 0 < negative_rate <= 1:
        raise ValueError(f"negative_rate must be in (0, 1], got {negative_rate}")
    prob = np.asarray(p, dtype="float64")
    return np.asarray(prob * negative_rate / (prob * negative_rate + 1.0 - prob))


def _distinct(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item, session): the earliest."""
    ordered = frame.sort_values(["user_id", "event_ts", "event_id"], kind="stable")
    return ordered.drop_duplicates(["user_id", "item_id", "session_id"]).reset_index(drop=True)


def _hard_negatives(negatives: pd.DataFrame, budget: pd.Series, rng: np.random.Generator) -> pd.DataFrame:
    """At most ``budget[user]`` of each user's logged negatives, drawn without replacement."""
    if negatives.empty:
        return negatives
    shuffled = negatives.iloc[rng.permutation(len(negatives))]
    rank = shuffled.groupby("user_id", sort=False).cumcount().to_numpy()
    limit = shuffled["user_id"].map(budget).fillna(0).to_numpy()
    kept = shuffled[rank < limit]
    return kept.sort_values(["user_id", "event_ts", "event_id"], kind="stable").reset_index(drop=True)


def _sampling_weights(catalogue: np.ndarray, positives: pd.DataFrame, cfg: PairsConfig) -> np.ndarray:
    if cfg.sampler == "uniform":
        return np.full(len(catalogue), 1.0 / len(catalogue))
    counts = positives["item_id"].value_counts().reindex(catalogue, fill_value=0).to_numpy("float64")
    # Every item keeps a little mass, so items without positives can still be drawn.
    weights = (counts + 1.0) ** cfg.popularity_exponent
    return np.asarray(weights / weights.sum())


def _sampled_negatives(
    positives: pd.DataFrame,
    needed: pd.Series,
    engaged: pd.DataFrame,
    catalogue: np.ndarray,
    probabilities: np.ndarray,
    rng: np.random.Generator,
) -> pd.DataFrame:
    """``needed[user]`` catalogue items per user, none the user engaged with, at the user's positive times."""
    users = needed[needed > 0]
    if users.empty:
        return pd.DataFrame({"user_id": [], "item_id": [], "event_ts": []})
    owner = np.repeat(users.index.to_numpy(dtype=object), users.to_numpy())
    items = np.empty(len(owner), dtype=object)
    todo = np.arange(len(owner))
    engaged_pairs = set(zip(engaged["user_id"], engaged["item_id"], strict=True))
    for _ in range(50):  # rejection: a user who engaged with most of the catalogue needs a few rounds
        if len(todo) == 0:
            break
        draws = catalogue[rng.choice(len(catalogue), size=len(todo), p=probabilities)]
        ok = np.fromiter(
            ((u, i) not in engaged_pairs for u, i in zip(owner[todo], draws, strict=True)), bool, len(todo)
        )
        items[todo[ok]] = draws[ok]
        todo = todo[~ok]
    keep = np.ones(len(owner), dtype=bool)
    keep[todo] = False  # users who engaged with (nearly) every item get fewer sampled negatives
    # Stamp each negative with one of its user's positive times, in turn.
    times = positives.groupby("user_id", sort=False)["event_ts"].agg(list)
    slot = pd.Series(owner).groupby(owner).cumcount().to_numpy()
    stamps = [times[u][k % len(times[u])] for u, k in zip(owner, slot, strict=True)]
    frame = pd.DataFrame({"user_id": owner, "item_id": items, "event_ts": stamps})
    return frame[keep].reset_index(drop=True)


def build_pairs(events: pd.DataFrame, items: pd.DataFrame, cfg: PairsConfig) -> TrainingPairs:
    """Positives with hard and sampled negatives (pure: no IO; deterministic for ``cfg.seed``)."""
    rng = np.random.default_rng(cfg.seed)
    labels = label_events(events, items)[cfg.target].to_numpy()
    frame = events.reset_index(drop=True)
    positives = _distinct(frame[labels == POSITIVE])
    negatives = _distinct(frame[labels == NEGATIVE])
    # An item the user engaged with in some session is no negative for that user.
    engaged = positives[["user_id", "item_id"]].drop_duplicates()
    negatives = negatives.merge(engaged, on=["user_id", "item_id"], how="left", indicator=True)
    negatives = negatives[negatives["_merge"] == "left_only"].drop(columns="_merge")
    negatives = negatives[negatives["user_id"].isin(positives["user_id"])]

    per_user = positives.groupby("user_id").size()
    wanted = per_user * cfg.negatives_per_positive
    hard = _hard_negatives(negatives, np.floor(wanted * cfg.hard_share).astype(int), rng)
    needed = wanted - hard.groupby("user_id").size().reindex(wanted.index, fill_value=0)
    catalogue = np.array(sorted(items["item_id"].astype(str)), dtype=object)
    probabilities = _sampling_weights(catalogue, positives, cfg)
    sampled = _sampled_negatives(positives, needed, engaged, catalogue, probabilities, rng)

    parts = [
        positives[["user_id", "item_id", "event_ts"]].assign(label=1, kind="positive", weight=1.0),
        hard[["user_id", "item_id", "event_ts"]].assign(label=0, kind="hard", weight=cfg.hard_weight),
        sampled.assign(label=0, kind="sampled", weight=1.0),
    ]
    pairs = pd.concat(parts, ignore_index=True)
    pairs = pairs.astype({"label": "int8", "weight": "float32"})
    pairs["event_ts"] = pd.to_datetime(pairs["event_ts"], utc=True).astype("datetime64[us, UTC]")
    pairs = pairs.sort_values(["user_id", "event_ts", "kind", "item_id"], kind="stable")
    pairs = pairs.reset_index(drop=True)
    n_available = len(negatives)
    stats = {
        "positives": len(positives),
        "hard_negatives_available": n_available,
        "hard_negatives": len(hard),
        "sampled_negatives": len(sampled),
        # Logged negatives kept / available: the rate for corrected_probability.
        "hard_negative_rate": len(hard) / n_available if n_available else 1.0,
        "negatives_per_positive": (len(hard) + len(sampled)) / max(len(positives), 1),
    }
    return TrainingPairs(pairs=pairs[PAIRS_SCHEMA.names], stats=stats)


def pairs_dir(root: Path, version: str, cfg: PairsConfig) -> Path:
    """``pairs/<dataset_version>/<hash of the config>/``: one folder per version and settings."""
    key = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:12]
    return root / "pairs" / version / key


def write_pairs(folder: Path, drawn: TrainingPairs, manifest: dict[str, Any]) -> bool:
    """Write ``pairs.parquet`` and ``manifest.json`` into ``folder`` atomically; False if already there."""
    if (folder / "manifest.json").exists():
        return False
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        table = pa.Table.from_pandas(drawn.pairs, schema=PAIRS_SCHEMA, preserve_index=False)
        pq.write_table(table.replace_schema_metadata(None), tmp / "pairs.parquet")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.rename(tmp, folder)
    except OSError:
        if not (folder / "manifest.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def run_pairs(config: PipelineConfig, dataset_version: str | None = None) -> dict[str, Any]:
    """Draw training pairs from the training part of the configured split of a dataset version.

    Returns:
        the pairs' manifest (dataset version, split, settings, counts, rates, folder).
    """
    from evaluation.split import load_split
    from recsys.ingest.snapshot import load_table
    from recsys.state import StateDir

    state = StateDir(config.state_dir)
    version = state.resolve_version(dataset_version)
    folder = pairs_dir(state.root, version, config.pairs)
    if not (folder / "manifest.json").exists():
        train = load_split(state, version, config.split).train
        drawn = build_pairs(train, load_table(state, version, "items"), config.pairs)
        manifest = {
            "dataset_version": version,
            "split": config.split.method,
            "pairs_config": config.pairs.model_dump(mode="json"),
            **drawn.stats,
        }
        write_pairs(folder, drawn, manifest)
    result: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    return {**result, "path": str(folder)}
