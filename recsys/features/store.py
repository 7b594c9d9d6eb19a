"""The Feast feature store of one state directory, built in code, and the reads training and serving do.

The store built here and `feast` run at the repository root (``feature_store.yaml``) share one registry
and one online store under ``<state>/feast/``. Feature sets are always named by feature service.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from recsys.ingest.leakage import FEATURE_TS_SUFFIX
from recsys.state import StateDir

if TYPE_CHECKING:
    import feast
    import pandas as pd

    from recsys.config import FeaturesConfig

PROJECT = "recsys"
ENTITY_KEYS = ("user_id", "item_id")
EVENT_TIMESTAMP = "event_timestamp"
_REFS: weakref.WeakKeyDictionary[Any, dict[tuple[str, frozenset[str]], list[str]]] = (
    weakref.WeakKeyDictionary()
)
_TTLS: weakref.WeakKeyDictionary[Any, dict[str, float]] = weakref.WeakKeyDictionary()
# Feast's suffix of the event-time columns of an online response read with timestamps.
TIMESTAMP_SUFFIX = "__ts"
# Materialisation reads snapshot rows from here on; the tables hold nothing older.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FeatureRequestError(ValueError):
    """A feature request that names no usable entities, an unknown service, or malformed rows."""


class FeatureStoreUnavailable(ConnectionError):
    """The online store (or the SQL registry) did not answer, or refused an operation.

    Raised by the online reads and by materialisation; serving catches it and falls back. The message
    names the store without its password.
    """

    def __init__(self, store: str, reason: str) -> None:
        super().__init__(f"feature store {store} is unavailable: {reason}")
        self.store = store


def describe_online_store(store: feast.FeatureStore) -> str:
    """The online store as ``sqlite:<path>`` or ``redis://host:port/db``, never with its password."""
    online = store.config.online_store
    if online.type == "sqlite":
        return f"sqlite:{online.path}"
    if online.type == "redis":
        fields = online.connection_string.split(",")
        hosts = [field for field in fields if "=" not in field]
        db = next((field.split("=", 1)[1] for field in fields if field.startswith("db=")), "0")
        return f"redis://{','.join(hosts)}/{db}"
    return str(online.type)


@contextlib.contextmanager
def online_store_errors(store: feast.FeatureStore) -> Iterator[None]:
    """Turn the Redis client's errors (down, timed out, refusing writes) into ``FeatureStoreUnavailable``."""
    from redis.exceptions import RedisError

    try:
        yield
    except RedisError as err:
        # A pipeline's error quotes the failing command, serialised keys and values included: keep the cause.
        reason = (str(err) or type(err).__name__).split(" of pipeline caused error: ", 1)[-1]
        raise FeatureStoreUnavailable(describe_online_store(store), reason) from err


def redis_connection_string(url: str, timeout_s: float | None = None) -> str:
    """Feast's ``host:port,db=N,...`` form of a ``redis://`` or ``rediss://`` URL.

    ``timeout_s`` bounds connecting and each socket read or write, and turns off the client's retries
    (three, with backoff from 1 s to 10 s, by default), so that a Redis that is down or hangs fails the
    caller within ``timeout_s`` and the caller (serving) falls back instead of waiting seconds.

    >>> redis_connection_string("redis://:secret@cache:6380/2")
    'cache:6380,db=2,password=secret'
    >>> redis_connection_string("redis://127.0.0.1:6379", timeout_s=0.5)
    '127.0.0.1:6379,db=0,socket_timeout=0.5,socket_connect_timeout=0.5,retry=null'
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise FeatureRequestError(f"redis_url must look like redis://host:port/db, got {url!r}")
    db = parts.path.lstrip("/") or "0"
    if not db.isdigit():
        raise FeatureRequestError(f"redis_url database must be a number, got {db!r}")
    fields = [f"{parts.hostname}:{parts.port or 6379}", f"db={db}"]
    if parts.username:
        fields.append(f"username={unquote(parts.username)}")
    if parts.password:
        fields.append(f"password={unquote(parts.password)}")
    if parts.scheme == "rediss":
        fields.append("ssl=true")
    if timeout_s is not None:
        # Feast reads each value as JSON: null is None, which redis-py takes as "no retries".
        fields += [f"socket_timeout={timeout_s}", f"socket_connect_timeout={timeout_s}", "retry=null"]
    return ",".join(fields)


def build_store(state: StateDir, cfg: FeaturesConfig) -> feast.FeatureStore:
    """A Feast store over the offline tables under ``state``, with the registry and online store that
    ``cfg`` names: by default a registry file and SQLite under ``state/feast``; in production a SQL
    registry (``registry_url``) and Redis (``redis_url``).

    Also points ``RECSYS_STATE_DIR`` at ``state.root``, so that ``feature_repo`` modules imported later in
    this process, and `feast` commands it starts, describe the same tables.
    """
    from feast import FeatureStore, RepoConfig
    from feast.infra.offline_stores.duckdb import DuckDBOfflineStoreConfig
    from feast.infra.online_stores.redis import RedisOnlineStoreConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
    from feast.repo_config import MaterializationConfig

    state.feast.mkdir(parents=True, exist_ok=True)
    os.environ["RECSYS_STATE_DIR"] = str(state.root.absolute())
    online: Any
    if cfg.online_store == "redis":
        online = RedisOnlineStoreConfig(
            connection_string=redis_connection_string(cfg.redis_url, cfg.redis_timeout_s)
        )
    else:
        online = SqliteOnlineStoreConfig(path=str(state.feast / "online.db"))
    registry = _registry_config(state, cfg)
    config = RepoConfig(
        project=PROJECT,
        provider="local",
        registry=registry,
        online_store=online,
        offline_store=DuckDBOfflineStoreConfig(),
        materialization=MaterializationConfig(pull_latest_features=True),
        entity_key_serialization_version=3,
        repo_path=state.root.absolute(),
    )
    try:
        store = FeatureStore(config=config)
        if cfg.registry == "sql":
            store.registry  # noqa: B018 -- connects now: a wrong URL or a database down fails here, readably
        return store
    except Exception as err:
        if cfg.registry != "sql" or not _is_database_error(err):
            raise
        raise FeatureStoreUnavailable(
            f"registry {_hide_password(cfg.registry_url)}", _first_line(err)
        ) from err


def _registry_config(state: StateDir, cfg: FeaturesConfig) -> Any:
    from feast.infra.registry.sql import SqlRegistryConfig
    from feast.repo_config import RegistryConfig

    from recsys.config import ConfigError

    if cfg.registry == "file":
        return RegistryConfig(
            registry_type="file", path=str(state.feast / "registry.db"), cache_ttl_seconds=60
        )
    if not cfg.registry_url:
        raise ConfigError(
            "features.registry is sql but RECSYS_REGISTRY_URL is not set "
            "(e.g. postgresql+psycopg://feast@db.internal:5432/feast)"
        )
    # pool_pre_ping: a registry connection dropped by the database is replaced instead of failing a read.
    return SqlRegistryConfig(
        registry_type="sql",
        path=cfg.registry_url,
        cache_ttl_seconds=60,
        sqlalchemy_config_kwargs={"echo": False, "pool_pre_ping": True},
    )


def _is_database_error(err: BaseException) -> bool:
    from sqlalchemy.exc import OperationalError

    return isinstance(err, OperationalError)


def _hide_password(url: str) -> str:
    """The URL as it may be shown.

    >>> _hide_password("postgresql+psycopg://feast:secret@db:5432/feast")
    'postgresql+psycopg://feast:***@db:5432/feast'
    """
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _definitions(offline_dir: Path) -> list[Any]:
    """Every Feast object of the ``feature_repo`` package, with file sources pointed at ``offline_dir``.

    The modules fix their source paths when first imported; a process may build stores for several state
    directories, so the sources are re-pointed here rather than trusted. A new module in ``feature_repo``
    is picked up without changes here, as `feast apply` would.
    """
    import importlib
    import pkgutil

    from feast import Entity, FeatureService, FeatureView, FileSource, OnDemandFeatureView, PushSource

    import feature_repo

    kinds = (Entity, FileSource, PushSource, FeatureView, OnDemandFeatureView, FeatureService)
    found: dict[tuple[type, str], Any] = {}
    for module_info in pkgutil.iter_modules(feature_repo.__path__):
        module = importlib.import_module(f"feature_repo.{module_info.name}")
        for value in vars(module).values():
            if isinstance(value, kinds):
                found.setdefault((type(value), value.name), value)

    def moved(source: FileSource) -> FileSource:
        copy: FileSource = FileSource.from_proto(source.to_proto())
        copy.file_options.uri = str(offline_dir / Path(source.path).name)
        return copy

    objects: list[Any] = []
    for value in found.values():
        if isinstance(value, FileSource):
            value = moved(value)
        elif isinstance(value, PushSource):
            assert isinstance(value.batch_source, FileSource)
            value = PushSource(
                name=value.name,
                batch_source=moved(value.batch_source),
                description=value.description,
                tags=value.tags,
                owner=value.owner,
            )
        elif isinstance(value, FeatureView) and isinstance(value.batch_source, FileSource):
            proto = value.to_proto()
            proto.spec.batch_source.CopyFrom(moved(value.batch_source).to_proto())
            if value.stream_source is not None and isinstance(value.stream_source, PushSource):
                stream = proto.spec.stream_source
                stream.batch_source.CopyFrom(moved(value.batch_source).to_proto())
            value = FeatureView.from_proto(proto)
        objects.append(value)
    return objects


def apply_definitions(store: feast.FeatureStore) -> None:
    """Register the feature_repo entities, sources, views and services (idempotent)."""
    store.apply(_definitions(_offline_dir(store)))


def _offline_dir(store: feast.FeatureStore) -> Path:
    if store.config.repo_path is None:
        raise FeatureRequestError("the store was not built by build_store: it has no state directory")
    return StateDir(Path(store.config.repo_path)).offline


@contextlib.contextmanager
def _quiet_offline_store() -> Iterator[None]:
    """Hide the deprecation notice ibis 12 prints on every DuckDB query; it is not ours to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fetch_arrow_table.*", category=DeprecationWarning)
        yield


def batch_views(store: feast.FeatureStore) -> list[feast.FeatureView]:
    """The online views that materialisation loads from their snapshot tables.

    Views fed by a push source (sessions) are left out: pushes keep them current, and their offline
    rows are older than what was pushed (SQLite would overwrite the newer rows). So are views whose
    snapshot file does not exist yet: there is nothing to load, and DuckDB would fail on the path.
    """
    from feast import FileSource, PushSource

    return [
        view
        for view in store.list_feature_views()
        if view.online
        and not isinstance(view.stream_source, PushSource)
        and not (isinstance(view.batch_source, FileSource) and not Path(view.batch_source.path).exists())
    ]


def materialize(
    store: feast.FeatureStore, end: datetime, start: datetime = _EPOCH, views: list[str] | None = None
) -> None:
    """Load each entity's newest snapshot with ``start <= feature_ts <= end`` into the online store,
    replacing what the store holds for that entity; entities without a snapshot in the window keep theirs.

    Args:
        store: From ``build_store``.
        end: Newest snapshot time to load.
        start: Oldest snapshot time to read (the epoch: every entity).
        views: Names of views to load (default: ``batch_views``).

    Raises:
        FeatureStoreUnavailable: The online store is down or refused the writes (some entities may have
            been written: loading the same window again completes it).
    """
    names = [view.name for view in batch_views(store)] if views is None else views
    if not names:
        return  # Feast reads an empty list as "every view"
    if not store.config.materialization_config.pull_latest_features:
        raise FeatureRequestError("materialisation needs pull_latest_features: one row per entity")
    with _quiet_offline_store(), online_store_errors(store):
        _overwriting(store).materialize(start_date=start, end_date=end, feature_views=names)


def _overwriting(store: feast.FeatureStore) -> feast.FeatureStore:
    """``store`` itself, or for Redis a twin whose writes replace the stored values unconditionally.

    Feast's Redis store skips a write whose event time is not newer than the stored one (feast#2795): a
    corrected snapshot with the same ``feature_ts``, or an entity whose newest snapshot was withdrawn,
    would keep its old values. Each entity gets one row per load (its newest in the window), so the
    unconditional write loses no ordering. Only materialisation uses the twin: pushes keep the check.
    """
    from feast import FeatureStore

    online = store.config.online_store
    if online.type != "redis" or online.skip_dedup:
        return store
    config = store.config.model_copy(update={"online_config": online.model_copy(update={"skip_dedup": True})})
    config._online_store = None  # the copy would otherwise keep the original's parsed store config
    return FeatureStore(config=config)


def _service_refs(store: feast.FeatureStore, service_name: str, keys: set[str]) -> list[str]:
    """``view:feature`` references of a service, limited to the views whose join keys are all in ``keys``.

    So an item-only request to ``two_tower_v1`` returns the item tower's features. Published services do
    not change (a change is a new version), so the answer is kept per store: resolving it from the
    registry costs more than an online read.
    """
    cache = _REFS.setdefault(store, {})
    cache_key = (service_name, frozenset(keys))
    if cache_key not in cache:
        cache[cache_key] = _resolve_refs(store, service_name, keys)
    return cache[cache_key]


def _resolve_refs(store: feast.FeatureStore, service_name: str, keys: set[str]) -> list[str]:
    from feast.errors import FeatureServiceNotFoundException

    try:
        service = store.get_feature_service(service_name)
    except FeatureServiceNotFoundException as err:
        raise FeatureRequestError(f"unknown feature service {service_name!r}: run `recsys features`") from err
    refs: list[str] = []
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        if {column.name for column in view.entity_columns} <= keys:
            view_name = projection.name_alias or projection.name
            refs.extend(f"{view_name}:{feature.name}" for feature in projection.features)
    if not refs:
        raise FeatureRequestError(
            f"feature service {service_name!r} needs one of {list(ENTITY_KEYS)}, got columns {sorted(keys)}"
        )
    return refs


def historical_features(
    store: feast.FeatureStore, entity_df: pd.DataFrame, service_name: str
) -> pd.DataFrame:
    """Point-in-time features for each row: the newest snapshot with ``feature_ts <= event_timestamp``.

    Args:
        store: From ``build_store``.
        entity_df: ``user_id`` and/or ``item_id`` (strings) and ``event_timestamp``; other columns pass
            through.
        service_name: A feature service, e.g. ``ranker_v1``.

    Returns:
        ``entity_df``'s columns (index reset) plus the service's features for the entities present, same
        rows in the same order; features are missing (NaN/None) where the entity had no snapshot yet.
        Each feature view also adds ``<view>__feature_ts``, the time of the snapshot its features come
        from (NaT when none), for ``recsys.ingest.leakage.check_point_in_time``.
    """
    import pandas as pd

    keys = [key for key in ENTITY_KEYS if key in entity_df.columns]
    if EVENT_TIMESTAMP not in entity_df.columns:
        raise FeatureRequestError(f"entity_df needs an {EVENT_TIMESTAMP!r} column")
    for key in keys:
        if entity_df[key].isna().any() or not pd.api.types.is_string_dtype(entity_df[key]):
            raise FeatureRequestError(f"entity_df column {key!r} must hold non-null strings")
    refs = _service_refs(store, service_name, set(keys))
    timestamps = pd.to_datetime(entity_df[EVENT_TIMESTAMP], utc=True)
    if timestamps.isna().any():
        raise FeatureRequestError(f"entity_df column {EVENT_TIMESTAMP!r} has missing values")

    # Feast sorts by time and collapses rows with equal keys and time: ask once per distinct pair, then
    # spread the answers back over the original rows in their original order.
    query = pd.DataFrame({key: entity_df[key].to_numpy() for key in keys})
    query[EVENT_TIMESTAMP] = timestamps.array
    distinct = query.drop_duplicates(ignore_index=True)
    with _quiet_offline_store():
        found = store.get_historical_features(entity_df=distinct, features=refs).to_df()
    found[EVENT_TIMESTAMP] = pd.to_datetime(found[EVENT_TIMESTAMP], utc=True)
    names = [ref.split(":", 1)[1] for ref in refs]
    joined = query.merge(found[[*keys, EVENT_TIMESTAMP, *names]], on=[*keys, EVENT_TIMESTAMP], how="left")
    if len(joined) != len(entity_df):
        raise RuntimeError(f"feature retrieval returned {len(joined)} rows for {len(entity_df)}")
    result = entity_df.reset_index(drop=True).copy()
    for name in names:
        result[name] = joined[name].to_numpy()
    for view, snapshot_ts in _snapshot_times(store, refs, query).items():
        result[view + FEATURE_TS_SUFFIX] = snapshot_ts
    return result


def _snapshot_times(store: feast.FeatureStore, refs: list[str], query: pd.DataFrame) -> dict[str, pd.Series]:
    """Per feature view of ``refs``, the ``feature_ts`` of the snapshot row each query row's features come
    from (the newest with ``feature_ts <= event_timestamp``, the rule of Feast's join), NaT where the
    entity had none yet: what the leakage check compares with each example's time."""
    import pandas as pd
    from feast import FileSource

    times: dict[str, pd.Series] = {}
    order = query[EVENT_TIMESTAMP].astype("datetime64[us, UTC]").sort_values(kind="stable")
    for view_name in dict.fromkeys(ref.split(":", 1)[0] for ref in refs):
        view = store.get_feature_view(view_name)
        key = view.entity_columns[0].name
        source = view.batch_source
        if not isinstance(source, FileSource):
            raise FeatureRequestError(f"feature view {view_name!r} is not backed by a snapshot file")
        stamp = source.timestamp_field
        path = _offline_dir(store) / Path(source.path).name
        snapshots = pd.read_parquet(path, columns=[key, stamp]).dropna()
        snapshots[stamp] = pd.to_datetime(snapshots[stamp], utc=True).astype("datetime64[us, UTC]")
        left = pd.DataFrame({key: query[key].to_numpy()[order.index], EVENT_TIMESTAMP: order.array})
        left["_row"] = order.index.to_numpy()
        right = snapshots.assign(_snapshot=snapshots[stamp])[[key, stamp, "_snapshot"]]
        found = pd.merge_asof(
            left,
            right.sort_values(stamp),
            left_on=EVENT_TIMESTAMP,
            right_on=stamp,
            by=key,
            direction="backward",
        )
        times[view_name] = found.set_index("_row")["_snapshot"].sort_index().reset_index(drop=True)
    return times


def online_features(
    store: feast.FeatureStore, service_name: str, entity_rows: list[dict[str, Any]]
) -> pd.DataFrame:
    """The online store's newest features for each entity row, in the order given.

    Args:
        store: From ``build_store``, after ``materialize``.
        service_name: A feature service, e.g. ``two_tower_v1``.
        entity_rows: Dicts with ``user_id`` and/or ``item_id``; all rows must have the same keys.

    Returns:
        One row per entity row: the keys, then the features (None where the entity is unknown).
    """
    if not entity_rows:
        raise FeatureRequestError("entity_rows is empty")
    keys = set(entity_rows[0])
    if any(set(row) != keys for row in entity_rows):
        raise FeatureRequestError("every entity row must have the same keys")
    import pandas as pd

    refs = _service_refs(store, service_name, keys & set(ENTITY_KEYS))
    ttls = _view_ttls(store, refs)
    with online_store_errors(store):
        response = store.get_online_features(features=refs, entity_rows=entity_rows)
    found = response.to_dict(include_event_timestamps=bool(ttls))
    if ttls:
        _drop_expired(found, refs, ttls, time.time())
    names = [ref.split(":", 1)[1] for ref in refs]
    return pd.DataFrame(found)[[key for key in ENTITY_KEYS if key in keys] + names]


def ttl_seconds(ttl: timedelta | None) -> float:
    """A view's TTL in seconds; 0 for none (Feast reads a zero TTL as none too)."""
    return ttl.total_seconds() if ttl is not None and ttl > timedelta(0) else 0.0


def _view_ttls(store: feast.FeatureStore, refs: list[str]) -> dict[str, float]:
    """The TTL in seconds of each view of `refs` that has one (kept per store, as services do not change)."""
    cache = _TTLS.setdefault(store, {})
    for view_name in dict.fromkeys(ref.split(":", 1)[0] for ref in refs):
        if view_name not in cache:
            cache[view_name] = ttl_seconds(store.get_feature_view(view_name).ttl)
    return {view: cache[view] for view in dict.fromkeys(r.split(":", 1)[0] for r in refs) if cache[view] > 0}


def _drop_expired(found: dict[str, list[Any]], refs: list[str], ttls: dict[str, float], now: float) -> None:
    """Blank the values written more than their view's TTL before `now`, in place, and drop the times.

    Feast 0.67 returns an online value however old it is; a view's TTL says how long a value stays true
    (a session ends an hour after its last event), so an older value reads as missing here.
    """
    stamped = [key for key in found if key + TIMESTAMP_SUFFIX in found]
    for ref in refs:
        view_name, name = ref.split(":", 1)
        ttl = ttls.get(view_name)
        if ttl is not None and name + TIMESTAMP_SUFFIX in found:
            stamps = found[name + TIMESTAMP_SUFFIX]
            found[name] = [None if now - t > ttl else v for v, t in zip(found[name], stamps, strict=True)]
    for key in stamped:
        del found[key + TIMESTAMP_SUFFIX]
