"""The two-tower model's training inputs, built one way for `recsys train` (training/stage.py) and
`recsys tune` (training/tune_inputs.py): the positives of the train and validation events, each with its
point-in-time `two_tower_v1` features, its history, and its item's content where that was known."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import pandas as pd

from recsys.config import PipelineConfig
from training.retrieval import TwoTowerExamples
from training.runtime import ItemContent

if TYPE_CHECKING:
    import feast

    from recsys.ingest.snapshot import Dataset


@dataclass(frozen=True)
class TwoTowerInputs:
    """Train and validation examples, and the vocabularies and item content they were built with."""

    train: TwoTowerExamples
    validation: TwoTowerExamples
    users: list[str]
    items: list[str]
    content: ItemContent | None

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def content_dim(self) -> int:
        return 0 if self.content is None else self.content.dim


def histories(events: list[pd.DataFrame], rows: pd.DataFrame, n: int) -> list[list[str]] | None:
    """The history input of each example row (user_id, event_timestamp), or None when it is off."""
    from training.examples import recent_positive_items

    return recent_positive_items(pd.concat(events, ignore_index=True), rows, n) if n else None


def with_ts(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``columns`` as strings, with the events' times as the `event_timestamp` a feature read needs."""
    out = frame[columns].astype(str).copy()
    out["event_timestamp"] = pd.to_datetime(frame["event_ts"], utc=True).to_numpy()
    return out.reset_index(drop=True)


def two_tower_inputs(
    config: PipelineConfig,
    store: feast.FeatureStore,
    dataset: Dataset,
    train_events: pd.DataFrame,
    validation_events: pd.DataFrame,
) -> TwoTowerInputs:
    """Examples of the positives of ``train_events`` and ``validation_events``, ids numbered by the train
    positives' vocabularies.

    ``dataset``'s catalogue and last event time place the item content read.
    """
    from recsys.features.store import historical_features
    from training import examples as ex
    from training.runtime import ITEM_CONTENT_FEATURE_SERVICE, TWO_TOWER_FEATURE_SERVICE
    from training.stage import uses_content

    train_pos, val_pos = ex.positives(train_events), ex.positives(validation_events)
    users, items = ex.vocabulary(train_pos["user_id"]), ex.vocabulary(train_pos["item_id"])
    content: ItemContent | None = None
    if uses_content(config):
        # Content never changes, so it is read once per item; each example keeps it only when the
        # item's content was known at the example's time.
        catalog = sorted(dataset.items["item_id"].astype(str))
        latest = pd.to_datetime(dataset.events["event_ts"], utc=True).max() + timedelta(days=1)
        content_rows = historical_features(
            store, pd.DataFrame({"item_id": catalog, "event_timestamp": latest}), ITEM_CONTENT_FEATURE_SERVICE
        )
        content = ItemContent.from_rows(content_rows) or None
    columns = ["user_id", "item_id"]
    train_rows = historical_features(store, with_ts(train_pos, columns), TWO_TOWER_FEATURE_SERVICE)
    val_rows = historical_features(store, with_ts(val_pos, columns), TWO_TOWER_FEATURE_SERVICE)
    # Each example's history: the user's positives strictly before it (validation examples also see the
    # validation positives before them, as a served user would).
    n = config.two_tower.history_length
    train_history = histories([train_events], train_rows, n)
    val_history = histories([train_events, validation_events], val_rows, n)
    return TwoTowerInputs(
        train=ex.two_tower_examples(train_rows, users, items, content, train_history, n),
        validation=ex.two_tower_examples(val_rows, users, items, content, val_history, n),
        users=users,
        items=items,
        content=content,
    )
