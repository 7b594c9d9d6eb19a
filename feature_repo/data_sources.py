"""The offline tables written by the batch feature job (`recsys features`).

Their location follows the state directory: ``$RECSYS_STATE_DIR/offline`` when the variable is set (the
`feast` CLI reads it for `feature_store.yaml` too), else ``<repository>/.state/offline``. The path is read
once, when this module is imported.
"""

import os
from pathlib import Path

from feast import FileSource

_REPO_ROOT = Path(__file__).resolve().parents[1]


def offline_dir() -> Path:
    """Where the offline feature tables live for the current environment."""
    state_dir = Path(os.environ.get("RECSYS_STATE_DIR") or _REPO_ROOT / ".state")
    return state_dir.absolute() / "offline"


user_features_source = FileSource(
    name="user_features",
    path=str(offline_dir() / "user_features.parquet"),
    timestamp_field="feature_ts",
    created_timestamp_column="created_ts",
    description="Per-user snapshots: only events strictly before feature_ts.",
)

item_features_source = FileSource(
    name="item_features",
    path=str(offline_dir() / "item_features.parquet"),
    timestamp_field="feature_ts",
    created_timestamp_column="created_ts",
    description="Per-item snapshots: only events strictly before feature_ts.",
)
