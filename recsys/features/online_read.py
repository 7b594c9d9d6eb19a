"""The serving-speed online read: a feature service's views read straight from the online store's tables.

Feast's ``get_online_features`` spends most of its time around the store read (registry lookups, entity
checks, building a response proto, then converting it); for the few hundred candidates of one request
that is ~15-30 ms. This reader does only the read: the keys are Feast's own (``serialize_entity_key``,
the Redis field hashes of ``feast.infra.online_stores.helpers``), the values Feast's own ``Value`` protos,
decoded by Feast's own ``feast_value_type_to_python_type``, so the frame equals the one
``recsys.features.store.online_features`` returns (a test holds both stores, SQLite and Redis, to it).

Layouts it reads (Feast 0.67, ``entity_key_serialization_version`` 3):

- SQLite: one table per view, ``<project>_<view>``, a row per (``entity_key``, ``feature_name``) with the
  serialised ``Value`` in ``value``.
- Redis: one hash per entity, key ``serialize_entity_key(key) + project``, field
  ``mmh3("<view>:<feature>")`` holding the serialised ``Value``.

Entities whose values change slowly (items, by default) can be kept decoded in a small TTL + LRU cache:
a request then reads only the entities it has not seen for ``cache_ttl_s``.

A view with a TTL (the sessions) is read with its event timestamps (SQLite's ``event_ts`` column, the
Redis hash's ``_ts:<view>`` field), and a value older than the TTL reads as missing: the rule of
``online_features``, where Feast 0.67 itself returns a value however old it is. Such views are never cached.
"""

from __future__ import annotations

import sqlite3
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from recsys.features.store import ENTITY_KEYS, FeatureRequestError, online_store_errors, ttl_seconds

if TYPE_CHECKING:
    import feast

# SQLite builds before 3.32 allow at most 999 bound parameters per statement.
_SQL_CHUNK = 900
_MISSING: tuple[Any, ...] = ()
# Serialised entity keys kept per reader (about 100 bytes each); the memo starts over past this.
_MAX_KEYS = 1_000_000
# Where a fetched entity's event time (POSIX seconds) is put among its fields, for views with a TTL.
_EVENT_TIME = "\x00event_time"


@dataclass(frozen=True)
class ViewRead:
    """What one request reads of one feature view: its table, its join key and the features asked for."""

    view: str  # the view's name as stored (its table / hash-field prefix)
    table: str  # the SQLite table
    join_key: str
    features: tuple[str, ...]
    value_types: tuple[Any, ...]  # feast ValueType per feature, for Feast's own value conversion
    ttl_s: float = 0.0  # a value older than this reads as missing; 0: values never expire


@dataclass(frozen=True)
class ServicePlan:
    """The views of a feature service that rows with `keys` read, in the service's order."""

    keys: tuple[str, ...]
    views: tuple[ViewRead, ...]
    columns: tuple[str, ...]


class TTLCache:
    """Decoded feature values per entity, each kept `ttl_s` seconds, the least recently used dropped first.

    >>> clock = iter([0.0, 5.0, 20.0]).__next__
    >>> cache = TTLCache(ttl_s=10.0, max_entries=2, clock=clock)
    >>> cache.put("a", (1,)); cache.get("a")
    (1,)
    >>> cache.get("a") is None  # 20 s later: expired
    True
    """

    def __init__(self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s <= 0 or max_entries < 1:
            raise ValueError("a cache needs ttl_s > 0 and max_entries >= 1")
        self._ttl = ttl_s
        self._max = max_entries
        self._clock = clock
        self._entries: OrderedDict[Any, tuple[float, tuple[Any, ...]]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Any) -> tuple[Any, ...] | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] < self._clock():
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: Any, values: tuple[Any, ...]) -> None:
        self._entries[key] = (self._clock() + self._ttl, values)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class _SqliteTables:
    """Reads Feast's SQLite online tables over a read-only connection of its own."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if not self._path.exists():
                raise FeatureRequestError(f"no online store at {self._path}: run `recsys features`")
            # No type detection: parsing every event timestamp costs more than the read; the views with a
            # TTL parse theirs (`_posix_seconds`).
            self._conn = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, check_same_thread=False)
        return self._conn

    def fetch(self, read: ViewRead, keys: Sequence[bytes], project: str) -> list[dict[str, Any]]:
        found: dict[bytes, dict[str, Any]] = {}
        stamped = read.ttl_s > 0
        with self._lock:
            conn = self._connection()
            for start in range(0, len(keys), _SQL_CHUNK):
                chunk = keys[start : start + _SQL_CHUNK]
                rows = conn.execute(
                    f"SELECT entity_key, feature_name, value, {'event_ts' if stamped else 'NULL'} "
                    f'FROM "{read.table}" WHERE entity_key IN ({",".join("?" * len(chunk))})',
                    chunk,
                ).fetchall()
                for key, name, value, event_ts in rows:
                    fields = found.setdefault(key, {})
                    fields[name] = value
                    if stamped:  # one time per entity and view: each feature's row carries the same
                        fields[_EVENT_TIME] = _posix_seconds(event_ts)
        return [found.get(key, {}) for key in keys]

    def entity_keys(self, read: ViewRead, project: str) -> list[bytes]:
        """The serialised key of every entity the view's table holds a row for."""
        with self._lock:
            rows = self._connection().execute(f'SELECT DISTINCT entity_key FROM "{read.table}"').fetchall()
        return [key for (key,) in rows]


class _RedisHashes:
    """Reads Feast's Redis hashes with one pipelined HMGET per entity."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._fields: dict[ViewRead, list[bytes]] = {}

    def fetch(self, read: ViewRead, keys: Sequence[bytes], project: str) -> list[dict[str, Any]]:
        from feast.infra.online_stores.helpers import _mmh3

        fields = self._fields.get(read)
        if fields is None:
            fields = [_mmh3(f"{read.view}:{name}") for name in read.features]
            if read.ttl_s > 0:  # Feast's event time of the entity's values of this view, last
                fields.append(f"_ts:{read.view}".encode())
            self._fields[read] = fields
        suffix = project.encode("utf-8")
        with self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key + suffix, fields)
            replies = pipe.execute()
        out: list[dict[str, Any]] = []
        for reply in replies:
            found = {
                name: value for name, value in zip(read.features, reply, strict=False) if value is not None
            }
            if read.ttl_s > 0 and found and reply[-1] is not None:
                found[_EVENT_TIME] = _timestamp_seconds(reply[-1])
            out.append(found)
        return out

    def entity_keys(self, read: ViewRead, project: str) -> list[bytes]:
        """The serialised key of every entity hash of the project (any view's; a view without values for
        one reads as not stored)."""
        suffix = project.encode("utf-8")
        return [
            key[: -len(suffix)]
            for key in self._client.scan_iter(match=b"*" + suffix, count=10_000)
            if key.endswith(suffix)
        ]


class OnlineReader:
    """`(feature service, entity rows) -> frame` over the online store's tables; a drop-in for
    ``functools.partial(online_features, store)``.

    Args:
        store: From ``build_store``, after ``materialize``.
        cached_keys: Join keys whose entities' values are cached (items change slowly).
        cache_ttl_s: How long a cached entity's values are served without a read; 0 turns caching off.
        cache_max_entries: Entities kept in the cache.
        clock: Seconds, for the cache's expiry.
        wall_clock: POSIX seconds now, for the views' TTLs.
    """

    def __init__(
        self,
        store: feast.FeatureStore,
        cached_keys: Sequence[str] = ("item_id",),
        cache_ttl_s: float = 0.0,
        cache_max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._wall_clock = wall_clock
        self._store = store
        config = store.config
        self._project = config.project
        self._key_version = config.entity_key_serialization_version
        self._versioning = bool(config.registry.enable_online_feature_view_versioning)
        self._backend = _backend(store)
        self._plans: dict[tuple[str, frozenset[str]], ServicePlan] = {}
        self._cached_keys = frozenset(cached_keys)
        self._keys: dict[tuple[str, str], bytes] = {}
        self._slots: dict[tuple[str, tuple[str, ...]], int] = {}
        self.cache = TTLCache(cache_ttl_s, cache_max_entries, clock) if cache_ttl_s > 0 else None

    def __call__(self, service_name: str, entity_rows: list[dict[str, Any]]) -> pd.DataFrame:
        if not entity_rows:
            raise FeatureRequestError("entity_rows is empty")
        keys = set(entity_rows[0])
        if any(set(row) != keys for row in entity_rows):
            raise FeatureRequestError("every entity row must have the same keys")
        plan = self._plan(service_name, keys & set(ENTITY_KEYS))
        columns: dict[str, list[Any]] = {key: [row[key] for row in entity_rows] for key in plan.keys}
        for read in plan.views:
            ids = columns[read.join_key]
            for value in ids:
                if not isinstance(value, str):
                    raise FeatureRequestError(f"{read.join_key} values must be strings, got {value!r}")
            values = self._values(read, ids)
            for j, name in enumerate(read.features):
                # Lists are copied so a caller changing one cannot change the cache or another row.
                columns[name] = [
                    None if not row else (list(row[j]) if isinstance(row[j], list) else row[j])
                    for row in values
                ]
        return pd.DataFrame({name: columns[name] for name in plan.columns})

    def service_views(self, service_name: str, keys: Sequence[str] = ENTITY_KEYS) -> tuple[ViewRead, ...]:
        """The views of the service that rows with `keys` read, in the service's order."""
        plan = self._plan(service_name, set(keys) & set(ENTITY_KEYS))
        if any(read.ttl_s > 0 for read in plan.views):
            raise FeatureRequestError(f"feature service {service_name!r} has a view with a TTL")
        return plan.views

    def stored_entities(self, read: ViewRead) -> list[str]:
        """The ids of `read.join_key` the online store holds (for the views of that key: Redis keeps one
        hash per entity, whatever its views)."""
        from feast.infra.key_encoding_utils import deserialize_entity_key

        ids: list[str] = []
        for key in self._backend.entity_keys(read, self._project):
            try:
                entity = deserialize_entity_key(key, entity_key_serialization_version=self._key_version)
            except (ValueError, IndexError, UnicodeDecodeError, struct.error):  # not a Feast key
                continue
            if list(entity.join_keys) == [read.join_key] and entity.entity_values[0].HasField("string_val"):
                ids.append(entity.entity_values[0].string_val)
        return ids

    def entity_values(self, read: ViewRead, ids: list[str]) -> list[tuple[Any, ...]]:
        """Feast's Python values of `read.features` per id (None where no value); `()` for an entity the
        view does not hold."""
        return self._values(read, ids)

    def _values(self, read: ViewRead, ids: list[str]) -> list[tuple[Any, ...]]:
        """Decoded feature values (in `read.features` order) per id; `()` for an entity not in the store."""
        cache = self.cache if read.join_key in self._cached_keys and read.ttl_s == 0 else None
        # Two services may read different features of one view: each (view, features) has its own entries.
        slot = self._slots.setdefault((read.view, read.features), len(self._slots))
        decoded: dict[str, tuple[Any, ...]] = {}
        wanted: list[str] = []
        for entity in dict.fromkeys(ids):
            hit = cache.get((slot, entity)) if cache is not None else None
            if hit is None:
                wanted.append(entity)
            else:
                decoded[entity] = hit
        if wanted:
            with online_store_errors(self._store):  # Redis down: FeatureStoreUnavailable, for the fallback
                keys = [self._key(read.join_key, e) for e in wanted]
                stored = self._backend.fetch(read, keys, self._project)
            now = self._wall_clock() if read.ttl_s > 0 else 0.0
            for entity, fields in zip(wanted, stored, strict=True):
                # `now - t > ttl`, the rule of `online_features`; a value without a time never expires.
                expired = read.ttl_s > 0 and now - fields.get(_EVENT_TIME, now) > read.ttl_s
                values = _MISSING if expired else _decode(read, fields)
                decoded[entity] = values
                if cache is not None:
                    cache.put((slot, entity), values)
        return [decoded[entity] for entity in ids]

    def _key(self, join_key: str, value: str) -> bytes:
        """Feast's serialised entity key; kept, since serialising costs more than the read of one entity."""
        cached = self._keys.get((join_key, value))
        if cached is not None:
            return cached
        if len(self._keys) >= _MAX_KEYS:
            self._keys.clear()
        from feast.infra.key_encoding_utils import serialize_entity_key
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        entity = EntityKey(join_keys=[join_key], entity_values=[Value(string_val=value)])
        key: bytes = serialize_entity_key(entity, entity_key_serialization_version=self._key_version)
        self._keys[(join_key, value)] = key
        return key

    def _plan(self, service_name: str, keys: set[str]) -> ServicePlan:
        """The service's views for rows with `keys`; resolved once, as published services do not change."""
        cache_key = (service_name, frozenset(keys))
        plan = self._plans.get(cache_key)
        if plan is None:
            plan = self._plans[cache_key] = self._resolve(service_name, keys)
        return plan

    def _resolve(self, service_name: str, keys: set[str]) -> ServicePlan:
        from feast.errors import FeatureServiceNotFoundException
        from feast.infra.online_stores.helpers import compute_table_id, compute_versioned_name

        try:
            service = self._store.get_feature_service(service_name)
        except FeatureServiceNotFoundException as err:
            raise FeatureRequestError(
                f"unknown feature service {service_name!r}: run `recsys features`"
            ) from err
        reads: list[ViewRead] = []
        for projection in service.feature_view_projections:
            view = self._store.get_feature_view(projection.name)
            join_keys = [column.name for column in view.entity_columns]
            if not set(join_keys) <= keys:
                continue
            if len(join_keys) != 1:
                raise FeatureRequestError(f"view {view.name!r} has {len(join_keys)} join keys; one is read")
            reads.append(
                ViewRead(
                    view=compute_versioned_name(view, self._versioning),
                    table=compute_table_id(self._project, view, self._versioning),
                    join_key=join_keys[0],
                    features=tuple(feature.name for feature in projection.features),
                    value_types=tuple(feature.dtype.to_value_type() for feature in projection.features),
                    ttl_s=ttl_seconds(view.ttl),
                )
            )
        if not reads:
            raise FeatureRequestError(
                f"feature service {service_name!r} needs one of {list(ENTITY_KEYS)}, "
                f"got columns {sorted(keys)}"
            )
        ordered_keys = tuple(key for key in ENTITY_KEYS if key in keys)
        columns = ordered_keys + tuple(name for read in reads for name in read.features)
        return ServicePlan(ordered_keys, tuple(reads), columns)


def _decode(read: ViewRead, fields: dict[str, Any]) -> tuple[Any, ...]:
    """Feast's Python values of the stored protos, in `read.features` order; `()` when nothing is stored.

    Plain scalars and numeric lists are taken from the proto directly (what Feast's converter returns for
    them, without its per-value checks for JSON, maps, timestamps and UUIDs); every other kind goes
    through ``feast_value_type_to_python_type`` itself.
    """
    if not fields:
        return _MISSING
    from feast.protos.feast.types.Value_pb2 import Value
    from feast.type_map import feast_value_type_to_python_type

    out: list[Any] = []
    for name, value_type in zip(read.features, read.value_types, strict=True):
        raw = fields.get(name)
        if raw is None:
            out.append(None)
            continue
        proto = Value()
        proto.ParseFromString(raw)
        kind = proto.WhichOneof("val")
        if kind in _PLAIN_SCALARS:
            out.append(getattr(proto, kind))
        elif kind in _PLAIN_LISTS:
            out.append(list(getattr(proto, kind).val))
        else:
            out.append(feast_value_type_to_python_type(proto, value_type))
    return tuple(out)


# Value kinds Feast's converter returns unchanged (scalars) or as a plain list of their items.
_PLAIN_SCALARS = frozenset({"int32_val", "int64_val", "float_val", "double_val", "bool_val", "string_val"})
_PLAIN_LISTS = frozenset(
    {
        "int32_list_val",
        "int64_list_val",
        "float_list_val",
        "double_list_val",
        "bool_list_val",
        "string_list_val",
    }
)


def _posix_seconds(event_ts: Any) -> float:
    """SQLite's stored event time in POSIX seconds, read back as Feast reads it.

    Feast stores a naive UTC datetime as ``int(dt.timestamp())`` (its sqlite3 adapter, which reads the
    naive time as local) and reads it back with ``datetime.fromtimestamp`` then calls it UTC: the same
    round trip here, so both agree on any machine's time zone. ISO text (an older adapter) also reads.

    >>> _posix_seconds("1970-01-01 00:01:00.500000")
    60.5
    """
    if isinstance(event_ts, bytes):
        event_ts = event_ts.decode()
    if isinstance(event_ts, int | float) or str(event_ts).lstrip("-").isdigit():
        naive = datetime.fromtimestamp(int(event_ts))
    else:
        naive = datetime.fromisoformat(str(event_ts)).replace(tzinfo=None)
    return naive.replace(tzinfo=UTC).timestamp()


def _timestamp_seconds(raw: bytes) -> float:
    """A serialised protobuf ``Timestamp`` (Feast's ``_ts:<view>`` field) in POSIX seconds."""
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.ParseFromString(raw)
    return float(stamp.seconds + stamp.nanos / 1e9)


def sqlite_path(store: feast.FeatureStore) -> Path:
    """The file of a SQLite online store (relative paths are relative to the repository)."""
    path = Path(store.config.online_store.path)
    if not path.is_absolute() and store.config.repo_path is not None:
        path = Path(store.config.repo_path) / path
    return path


def _backend(store: feast.FeatureStore) -> _SqliteTables | _RedisHashes:
    from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

    online = store.config.online_store
    if isinstance(online, SqliteOnlineStoreConfig):
        return _SqliteTables(sqlite_path(store))
    if isinstance(online, RedisOnlineStoreConfig):
        # Feast's own client set-up: cluster, sentinel, password and TLS mean what they mean in Feast.
        return _RedisHashes(RedisOnlineStore()._get_client(online))
    raise FeatureRequestError(f"the fast online read supports sqlite and redis, not {type(online).__name__}")
