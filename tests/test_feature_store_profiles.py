"""The production profile (SQL registry on PostgreSQL, Redis online store) serves what the embedded default
(registry file, SQLite) serves, switched by configuration only, against real servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import psycopg
import pytest
import redis
from factories import SnapshotRow, write_snapshot_tables
from servers import pgserver_url, scratch_database

from recsys.config import REPO_ROOT, ConfigError, FeaturesConfig, load_config
from recsys.features.materialization import materialize_online
from recsys.features.online_read import OnlineReader
from recsys.features.store import (
    FeatureStoreUnavailable,
    apply_definitions,
    build_store,
    online_features,
)
from recsys.state import StateDir

pytestmark = pytest.mark.integration

T1 = datetime(2024, 3, 1, tzinfo=UTC)
T2 = T1 + timedelta(days=7)
USERS: list[SnapshotRow] = [("u1", T1, 3, None), ("u1", T2, 4, None), ("u2", T1, 5, None)]
ITEMS: list[SnapshotRow] = [("i1", T1, 6, None), ("i2", T2, 7, None)]
# A database of its own on whatever server the fixture gives, emptied before use.
PROFILE_TEST_REDIS_DB = 10


def _serve(state: StateDir, config: FeaturesConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Register, load and read back through both read paths, as `recsys features` and serving do."""
    write_snapshot_tables(state, USERS, ITEMS)
    store = build_store(state, config)
    apply_definitions(store)
    materialize_online(state, config, store=store)
    pairs = [{"user_id": u, "item_id": i} for u in ("u1", "u2", "nobody") for i in ("i1", "i2", "gone")]
    return online_features(store, "ranker_v1", pairs), OnlineReader(store)("ranker_v1", pairs)


def test_production_profile_serves_what_the_default_serves(
    tmp_path: Path, redis_url: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = urlunsplit(urlsplit(redis_url)._replace(path=f"/{PROFILE_TEST_REDIS_DB}"))
    redis.Redis.from_url(url).flushdb()
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("RECSYS_REGISTRY_URL", postgres_url)
    production = load_config(REPO_ROOT / "configs" / "production.yaml").features
    default = load_config(REPO_ROOT / "configs" / "default.yaml").features
    assert (production.online_store, production.registry) == ("redis", "sql")
    assert (default.online_store, default.registry) == ("sqlite", "file")

    embedded = _serve(StateDir(tmp_path / "default"), default)
    served = _serve(StateDir(tmp_path / "production"), production)
    for ours, theirs in zip(served, embedded, strict=True):
        pd.testing.assert_frame_equal(ours, theirs)
    frame = served[0]
    assert frame["user_n_events"].tolist()[:6] == [4, 4, 4, 5, 5, 5]
    assert frame["item_n_events"][:2].tolist() == [6, 7] and pd.isna(frame["item_n_events"][2])
    assert frame["user_n_events"][6:].isna().all()  # nobody
    assert not (tmp_path / "production" / "feast" / "registry.db").exists()
    with psycopg.connect(postgres_url.replace("+psycopg", "")) as conn:
        views = {row[0] for row in conn.execute("SELECT feature_view_name FROM feature_views")}
    assert {"user_stats", "item_stats"} <= views
    assert redis.Redis.from_url(url).dbsize() == 4  # u1, u2, i1, i2


def test_registry_and_password_errors_are_readable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RECSYS_REGISTRY_URL is not set"):
        build_store(StateDir(tmp_path / "s"), FeaturesConfig(registry="sql", registry_url=""))
    closed = "postgresql+psycopg://feast:hunter2@127.0.0.1:1/feast"
    with pytest.raises(FeatureStoreUnavailable, match=r"registry postgresql\+psycopg://feast:\*\*\*@") as err:
        build_store(StateDir(tmp_path / "s"), FeaturesConfig(registry="sql", registry_url=closed))
    assert "hunter2" not in str(err.value)
    with pytest.raises(ConfigError, match="set RECSYS_REGISTRY_URL in the environment"):
        load_config(overrides=[f"features.registry_url={closed}"])
    with pytest.raises(ConfigError, match="set REDIS_URL in the environment"):
        load_config(overrides=["features.redis_url=redis://:hunter2@cache:6379/0"])


def test_a_postgres_from_the_pgserver_wheel_holds_the_registry(tmp_path: Path) -> None:
    """What the `postgres_url` fixture starts on a machine with no PostgreSQL of its own."""
    pytest.importorskip("pgserver")
    with pgserver_url(tmp_path / "pg") as server, scratch_database(server) as database:
        config = FeaturesConfig(registry="sql", registry_url=database)
        store = build_store(StateDir(tmp_path / "state"), config)
        apply_definitions(store)
        again = build_store(StateDir(tmp_path / "elsewhere"), config)  # another machine, same registry
        assert {"two_tower_v1", "ranker_v1"} <= {s.name for s in again.list_feature_services()}
