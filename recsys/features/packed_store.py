"""Packed values for serving: written right after materialisation, read with one MGET or one SELECT.

``pack_services(store)`` reads every entity the online store holds back through
``recsys.features.online_read.OnlineReader`` (whose values equal Feast's), packs each feature service's
values per entity (``recsys.features.packed``) and publishes them as a new *generation*:

- Redis: ``<project>:packed:<service>:<generation>:<join_key>:<id>`` one record each,
  ``...:<generation>:layout`` the layout (JSON), then ``<project>:packed:<service>:live`` switched to the
  new generation (one SET, atomic), then the older generations deleted.
- SQLite: ``online.packed.db`` beside ``online.db`` (WAL), tables ``packed_values`` (service,
  generation, join key, id -> record), ``packed_layouts`` and ``packed_live``; the records, layout and
  switch are one transaction.

``PackedReader`` reads the live pointer *in the same command* as the records of the generation it holds
the layout of (one ``MGET``; one ``SELECT ... UNION ALL``): when the pointer has moved it loads the new
layout and reads again, so a re-materialisation is visible to the next request and a request never
mixes generations, even while old generations are deleted. A service with no usable packed values
(never packed, layout missing or corrupted, records of the wrong size) is read by the fallback
(``OnlineReader``) and the packed read is tried again after ``retry_s``. With ``local_keys`` the reader
holds every record of those join keys (items) of the live generation in memory, reloaded when the
pointer moves, and reads only the pointer and the other keys (the user) from the store.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recsys.features.online_read import OnlineReader, ViewRead, sqlite_path
from recsys.features.packed import (
    PackedGroup,
    PackedLayout,
    PackedLayoutError,
    Records,
    build_group,
    decode_records,
    encode_records,
    frame_columns,
    object_array,
)
from recsys.features.store import ENTITY_KEYS, FeatureRequestError, online_store_errors

if TYPE_CHECKING:
    import feast

logger = logging.getLogger(__name__)

# Entities per bulk read of the online store and per write of packed records.
_CHUNK = 2_000
# Reads of a request when the live generation moves under it (a publish between two reads).
_ATTEMPTS = 3
# SQLite's default limit on bound parameters (3.32+) is 32,766; a statement keeps below it.
_SQL_PARAMS = 30_000
# Records of (join key, id) of one request: None where the generation holds no record.
Found = dict[str, list[bytes | None]]
# Separates the ids of a group in its id list (Redis); an id holding it is refused at packing.
_ID_SEP = "\x00"


class PackedUnavailable(RuntimeError):
    """No usable packed values for a service; the reader answers from the online store's tables."""


@dataclass(frozen=True)
class PackSummary:
    """What `pack_services` wrote for one service, or why it did not (``skipped``)."""

    service: str
    generation: str | None
    entities: dict[str, int]
    skipped: str | None = None


@dataclass(frozen=True)
class PackedRead:
    """One read: the frame, distinct ids per join key the store does not hold, and whether the packed
    values answered (False: the fallback did, and ``missing`` is empty)."""

    frame: pd.DataFrame
    missing: dict[str, int]
    packed: bool


def _glob(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


class _RedisPacked:
    def __init__(self, client: Any, project: str) -> None:
        self._client = client
        self._project = project

    def _base(self, service: str) -> str:
        return f"{self._project}:packed:{service}:"

    def publish(self, layout: PackedLayout, records: dict[str, tuple[list[str], list[bytes]]]) -> None:
        base, generation = self._base(layout.service), layout.generation
        generations = base + "generations"
        # Recorded first: a writer that dies half-way leaves a generation the next publish removes.
        self._client.sadd(generations, generation)
        for join_key, (ids, blobs) in records.items():
            head = f"{base}{generation}:{join_key}:"
            for start in range(0, len(ids), _CHUNK):
                chunk = zip(ids[start : start + _CHUNK], blobs[start : start + _CHUNK], strict=True)
                self._client.mset({head + entity: blob for entity, blob in chunk})
            # The ids of the group, for readers that hold a whole group in memory (`local_keys`).
            self._client.set(f"{base}{generation}:ids:{join_key}", _ID_SEP.join(ids).encode("utf-8"))
        self._client.set(f"{base}{generation}:layout", layout.to_json())
        self._client.set(base + "live", generation)
        # Readers check the pointer in the same MGET as the records, so old records can go at once.
        for old in self._client.smembers(generations):
            name = old.decode()
            if name == generation:
                continue
            batch: list[bytes] = []
            for key in self._client.scan_iter(match=_glob(f"{base}{name}:") + "*", count=10_000):
                batch.append(key)
                if len(batch) >= _CHUNK:
                    self._client.unlink(*batch)
                    batch = []
            if batch:
                self._client.unlink(*batch)
            self._client.srem(generations, old)

    def live(self, service: str) -> str | None:
        value = self._client.get(self._base(service) + "live")
        return None if value is None else value.decode()

    def layout(self, service: str, generation: str) -> str | None:
        value = self._client.get(f"{self._base(service)}{generation}:layout")
        return None if value is None else value.decode()

    def load_all(self, service: str, generation: str, join_key: str) -> tuple[list[str], list[bytes | None]]:
        """Every id of a group and its record (None where the generation was removed meanwhile)."""
        base = self._base(service)
        joined = self._client.get(f"{base}{generation}:ids:{join_key}")
        if joined is None:
            raise PackedUnavailable(
                f"packed {join_key} ids of {service!r} generation {generation!r} are missing"
            )
        ids = joined.decode("utf-8").split(_ID_SEP) if joined else []
        head = f"{base}{generation}:{join_key}:"
        blobs: list[bytes | None] = []
        for start in range(0, len(ids), 10 * _CHUNK):
            blobs += self._client.mget([head + entity for entity in ids[start : start + 10 * _CHUNK]])
        return ids, blobs

    def fetch(self, service: str, generation: str, wanted: dict[str, list[str]]) -> tuple[str | None, Found]:
        base = self._base(service)
        keys = [base + "live"]
        for join_key, ids in wanted.items():
            head = f"{base}{generation}:{join_key}:"
            keys.extend([head + entity for entity in ids])
        replies = self._client.mget(keys)
        found: Found = {}
        position = 1
        for join_key, ids in wanted.items():
            found[join_key] = replies[position : position + len(ids)]
            position += len(ids)
        return (None if replies[0] is None else replies[0].decode()), found


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS packed_live (service TEXT PRIMARY KEY, generation TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS packed_layouts (service TEXT, generation TEXT, layout TEXT NOT NULL, "
    "PRIMARY KEY (service, generation))",
    "CREATE TABLE IF NOT EXISTS packed_values (service TEXT, generation TEXT, join_key TEXT, entity_id TEXT, "
    "value BLOB NOT NULL, PRIMARY KEY (service, generation, join_key, entity_id)) WITHOUT ROWID",
)


class _SqlitePacked:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def publish(self, layout: PackedLayout, records: dict[str, tuple[list[str], list[bytes]]]) -> None:
        service, generation = layout.service, layout.generation
        conn = sqlite3.connect(self.path)
        try:
            # WAL: readers keep reading the old generation while the new one is written.
            conn.execute("PRAGMA journal_mode=WAL")
            with conn:
                for statement in _SCHEMA:
                    conn.execute(statement)
                for join_key, (ids, blobs) in records.items():
                    conn.executemany(
                        "INSERT INTO packed_values VALUES (?, ?, ?, ?, ?)",
                        (
                            (service, generation, join_key, entity, blob)
                            for entity, blob in zip(ids, blobs, strict=True)
                        ),
                    )
                conn.execute(
                    "INSERT INTO packed_layouts VALUES (?, ?, ?)", (service, generation, layout.to_json())
                )
                conn.execute("INSERT OR REPLACE INTO packed_live VALUES (?, ?)", (service, generation))
            with conn:
                for table in ("packed_values", "packed_layouts"):
                    conn.execute(
                        f"DELETE FROM {table} WHERE service = ? AND generation != ?", (service, generation)
                    )
        finally:
            conn.close()

    def _query(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._lock:
            if self._conn is None:
                if not self.path.exists():
                    raise PackedUnavailable(f"no packed values at {self.path}: run `recsys features`")
                self._conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, check_same_thread=False)
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as err:  # e.g. the tables are missing
                raise PackedUnavailable(f"packed values at {self.path} unreadable: {err}") from err

    def live(self, service: str) -> str | None:
        rows = self._query("SELECT generation FROM packed_live WHERE service = ?", (service,))
        return str(rows[0][0]) if rows else None

    def layout(self, service: str, generation: str) -> str | None:
        rows = self._query(
            "SELECT layout FROM packed_layouts WHERE service = ? AND generation = ?", (service, generation)
        )
        return str(rows[0][0]) if rows else None

    def load_all(self, service: str, generation: str, join_key: str) -> tuple[list[str], list[bytes | None]]:
        """Every id of a group and its record."""
        rows = self._query(
            "SELECT entity_id, value FROM packed_values "
            "WHERE service = ? AND generation = ? AND join_key = ?",
            (service, generation, join_key),
        )
        return [row[0] for row in rows], [row[1] for row in rows]

    def fetch(self, service: str, generation: str, wanted: dict[str, list[str]]) -> tuple[str | None, Found]:
        # One statement reads the pointer and the records from one snapshot; a request too large for
        # one statement is read in several, each with the pointer, and must see the same pointer in all.
        statements: list[list[tuple[str, list[str]]]] = [[]]
        size = 0
        for key, ids in wanted.items():
            for start in range(0, len(ids), _SQL_PARAMS):
                chunk = ids[start : start + _SQL_PARAMS]
                if size + len(chunk) > _SQL_PARAMS:
                    statements.append([])
                    size = 0
                statements[-1].append((key, chunk))
                size += len(chunk)
        stored: dict[str, dict[str, bytes]] = {key: {} for key in wanted}
        lives: set[str | None] = set()
        for pieces in statements:
            sql = ["SELECT NULL, generation, NULL FROM packed_live WHERE service = ?"]
            params: list[str] = [service]
            for key, chunk in pieces:
                sql.append(
                    "SELECT join_key, entity_id, value FROM packed_values "
                    "WHERE service = ? AND generation = ? "
                    f"AND join_key = ? AND entity_id IN ({','.join('?' * len(chunk))})"
                )
                params += [service, generation, key, *chunk]
            live: str | None = None
            for join_key, entity, value in self._query(" UNION ALL ".join(sql), params):
                if join_key is None:
                    live = entity
                else:
                    stored[join_key][entity] = value
            lives.add(live)
        seen = lives.pop() if len(lives) == 1 else None
        return seen, {key: list(map(stored[key].get, ids)) for key, ids in wanted.items()}


def packed_backend(store: feast.FeatureStore) -> _RedisPacked | _SqlitePacked:
    """Where the store's packed values live: beside its online store."""
    from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

    online = store.config.online_store
    if isinstance(online, SqliteOnlineStoreConfig):
        path = sqlite_path(store)
        return _SqlitePacked(path.with_name(f"{path.stem}.packed.db"))
    if isinstance(online, RedisOnlineStoreConfig):
        return _RedisPacked(RedisOnlineStore()._get_client(online), store.config.project)
    raise FeatureRequestError(f"packed reads support sqlite and redis, not {type(online).__name__}")


def _pack_group(
    reader: OnlineReader, join_key: str, reads: list[ViewRead]
) -> tuple[PackedGroup, list[str], list[bytes]]:
    """The group of `reads` (views of one join key) and a record per entity any of them holds."""
    ids = sorted(set().union(*(reader.stored_entities(read) for read in reads)))
    if any(_ID_SEP in entity for entity in ids):
        raise PackedLayoutError(f"a {join_key} holding NUL cannot be packed")
    kept: list[str] = []
    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        per_view = [reader.entity_values(read, chunk) for read in reads]
        for j, entity in enumerate(chunk):
            parts = [values[j] for values in per_view]
            if not any(parts):  # no view of this service holds it: it reads as unknown, as in Feast
                continue
            kept.append(entity)
            rows.append(
                tuple(
                    v
                    for read, part in zip(reads, parts, strict=True)
                    for v in (part or (None,) * len(read.features))
                )
            )
    names = [name for read in reads for name in read.features]
    types = [value_type.name for read in reads for value_type in read.value_types]
    group = build_group(join_key, names, types, rows)
    return group, kept, encode_records(group, rows)


def _unpackable(store: feast.FeatureStore, service: str) -> str | None:
    """Why a service's online values cannot be packed at materialisation, or None."""
    from feast.errors import FeastObjectNotFoundException

    try:
        projections = store.get_feature_service(service).feature_view_projections
        views = [store.get_feature_view(projection.name) for projection in projections]
    except FeastObjectNotFoundException as err:  # e.g. an on-demand view: computed per request
        return f"not every view is a stored feature view ({err})"
    for view in views:
        if view.stream_source is not None:
            return f"view {view.name!r} is pushed to between materialisations"
    return None


def pack_services(store: feast.FeatureStore, services: Sequence[str] | None = None) -> list[PackSummary]:
    """Pack and publish the online values of `services` (default: every feature service) as one new
    generation. Run right after materialisation; a service that cannot be packed (a view with a TTL,
    a feature of a type without a fixed width) is skipped with its reason and read through the fallback.
    """
    reader = OnlineReader(store)
    backend = packed_backend(store)
    names = list(services) if services is not None else [s.name for s in store.list_feature_services()]
    generation = str(time.time_ns())
    with online_store_errors(store):  # Redis down or refusing writes: FeatureStoreUnavailable
        return [_pack_service(store, reader, backend, service, generation) for service in names]


def _pack_service(
    store: feast.FeatureStore,
    reader: OnlineReader,
    backend: _RedisPacked | _SqlitePacked,
    service: str,
    generation: str,
) -> PackSummary:
    """Pack and publish one service, or say why it is not packed."""
    reason = _unpackable(store, service)
    if reason is not None:
        logger.info("feature service %s is not packed: %s", service, reason)
        return PackSummary(service, None, {}, reason)
    try:
        views = reader.service_views(service)
        by_key: dict[str, list[ViewRead]] = {}
        for read in views:
            by_key.setdefault(read.join_key, []).append(read)
        groups: list[PackedGroup] = []
        records: dict[str, tuple[list[str], list[bytes]]] = {}
        for join_key, reads in by_key.items():
            group, ids, blobs = _pack_group(reader, join_key, reads)
            groups.append(group)
            records[join_key] = (ids, blobs)
    except (PackedLayoutError, FeatureRequestError) as err:
        logger.warning("feature service %s is not packed: %s", service, err)
        return PackSummary(service, None, {}, str(err))
    features = tuple(name for read in views for name in read.features)
    backend.publish(PackedLayout(service, generation, tuple(groups), features), records)
    return PackSummary(service, generation, {key: len(ids) for key, (ids, _) in records.items()})


def load_layout(backend: _RedisPacked | _SqlitePacked, service: str) -> PackedLayout:
    """The live layout of `service`; PackedUnavailable, saying what is wrong, when there is none."""
    generation = backend.live(service)
    if generation is None:
        raise PackedUnavailable(f"feature service {service!r} has no packed values: run `recsys features`")
    text = backend.layout(service, generation)
    if text is None:
        raise PackedUnavailable(f"packed layout of {service!r} generation {generation!r} is missing")
    try:
        return PackedLayout.from_json(text, service, generation)
    except PackedLayoutError as err:
        raise PackedUnavailable(str(err)) from err


@dataclass(frozen=True)
class _LocalTable:
    """Every record of one group of one generation, held in memory: id -> position in `records`."""

    generation: str
    index: dict[str, int]
    records: Records


class PackedReader:
    """`(feature service, entity rows) -> frame` from the packed values; a drop-in for ``OnlineReader``.

    Args:
        store: From ``build_store``, after ``materialize`` and ``pack_services``.
        fallback: Answers services without usable packed values (default: an ``OnlineReader``).
        local_keys: Join keys whose whole group is held in memory, loaded when a new generation goes
            live (items: a request then reads only the pointer and the user from the store).
        retry_s: After a failed packed read, how long the fallback answers that service.
        clock: Seconds, for ``retry_s``.
    """

    def __init__(
        self,
        store: feast.FeatureStore,
        fallback: Callable[[str, list[dict[str, Any]]], pd.DataFrame] | None = None,
        local_keys: Sequence[str] = (),
        retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._backend = packed_backend(store)
        self._fallback = fallback if fallback is not None else OnlineReader(store)
        self._retry_s = retry_s
        self._clock = clock
        self._layouts: dict[str, PackedLayout] = {}
        self._local_keys = frozenset(local_keys)
        self._tables: dict[tuple[str, str], _LocalTable] = {}
        self._paused: dict[str, float] = {}
        self.fallbacks = 0
        self.last_error: str | None = None

    def __call__(self, service_name: str, entity_rows: list[dict[str, Any]]) -> pd.DataFrame:
        return self.read(service_name, entity_rows).frame

    def read(self, service_name: str, entity_rows: list[dict[str, Any]]) -> PackedRead:
        if not entity_rows:
            raise FeatureRequestError("entity_rows is empty")
        keys = entity_rows[0].keys()
        present = [key for key in ENTITY_KEYS if key in keys]
        # Rows of one length holding the first row's entity keys (a missing key fails the itemgetter):
        # cheaper than comparing every row's keys, and this runs per candidate on the serving path.
        try:
            if set(map(len, entity_rows)) != {len(keys)}:
                raise KeyError(keys)
            columns: dict[str, list[Any]] = {key: list(map(itemgetter(key), entity_rows)) for key in present}
        except KeyError:
            raise FeatureRequestError("every entity row must have the same keys") from None
        found = self._attempt(service_name, columns)
        if found is not None:
            layout, features, missing = found
            merged = {name: values for part in features.values() for name, values in part.items()}
            return PackedRead(_frame(columns, merged, layout), missing, True)
        self.fallbacks += 1
        return PackedRead(self._fallback(service_name, entity_rows), {}, False)

    def read_keyed(
        self, service_name: str, ids: dict[str, list[str]]
    ) -> dict[str, dict[str, np.ndarray]] | None:
        """Each join key's entities apart, in one read of the store: for key `k`, the columns of `ids[k]`
        (repeats kept, in order): `k` itself, then the features of `k`'s group in the service's order,
        each the array the column of ``read``'s frame holds.

        What a ranking request needs without repeating its user's features on every candidate's row, as
        arrays rather than frames (the caller takes a few columns of many rows, or every column of one
        row: a frame would be built only to be taken apart). None when the packed values cannot answer
        (then ``read`` falls back row by row).
        """
        columns = {key: list(values) for key, values in ids.items()}
        if not columns or any(not values for values in columns.values()):
            raise FeatureRequestError("every join key needs at least one id")
        if unknown := set(columns) - set(ENTITY_KEYS):
            raise FeatureRequestError(f"unknown join keys {sorted(unknown)}")
        found = self._attempt(service_name, columns)
        if found is None:
            return None
        layout, features, _ = found
        return {
            key: {key: object_array(values), **_ordered(features.get(key, {}), layout)}
            for key, values in columns.items()
        }

    def _attempt(
        self, service: str, columns: dict[str, list[Any]]
    ) -> tuple[PackedLayout, dict[str, dict[str, np.ndarray]], dict[str, int]] | None:
        """The packed read of `columns` (ids per join key, one entry per row), or None when the packed
        values cannot answer it now (the caller falls back; a broken state pauses them `retry_s`)."""
        # Distinct ids per key, in order of first appearance: what is read, and checked, once each.
        distinct = {key: list(dict.fromkeys(ids)) for key, ids in columns.items()}
        for key, ids in distinct.items():
            if set(map(type, ids)) != {str}:
                bad = next(value for value in ids if not isinstance(value, str))
                raise FeatureRequestError(f"{key} values must be strings, got {bad!r}")
        if self._clock() < self._paused.get(service, 0.0):
            return None
        try:
            with online_store_errors(self._store):  # Redis down: FeatureStoreUnavailable
                return self._read_packed(service, columns, distinct)
        except PackedUnavailable as err:
            # Said once per cause: a state never packed would otherwise log every retry_s.
            log = logger.debug if str(err) == self.last_error else logger.warning
            log("packed read of %s: %s; reading the online store's tables instead", service, err)
            self.last_error = str(err)
            self._layouts.pop(service, None)
            self._paused[service] = self._clock() + self._retry_s
            return None

    def _read_packed(
        self, service: str, columns: dict[str, list[Any]], distinct: dict[str, list[str]]
    ) -> tuple[PackedLayout, dict[str, dict[str, np.ndarray]], dict[str, int]] | None:
        """The layout, each group's feature columns (one value per row of `columns`) and the distinct ids
        per key the store does not hold; None when the keys match no group (the fallback explains it)."""
        layout = self._layouts.get(service)
        for _ in range(_ATTEMPTS):
            if layout is None:
                layout = load_layout(self._backend, service)
            groups = {key: group for key in distinct if (group := layout.group(key)) is not None}
            if not groups:
                return None
            remote = {key: distinct[key] for key in groups if key not in self._local_keys}
            live, found = self._backend.fetch(service, layout.generation, remote)
            if live == layout.generation:
                break
            layout = None  # published meanwhile (or removed): read the new pointer and layout
        else:
            raise PackedUnavailable(
                f"the live generation of {service!r} kept changing over {_ATTEMPTS} reads"
            )
        self._layouts[service] = layout
        features: dict[str, dict[str, np.ndarray]] = {}
        missing: dict[str, int] = {}
        for key, group in groups.items():
            try:
                if key in self._local_keys:
                    table = self._table(service, layout, group)
                    ids = distinct[key]
                    position = np.fromiter(map(table.index.get, ids, repeat(-1)), np.int64, len(ids))
                    stored = position >= 0
                    records = table.records.subset(position[stored])
                else:
                    blobs = found[key]
                    stored = np.fromiter(map(bool, blobs), dtype=bool, count=len(blobs))
                    # a record is never empty (it has its null flags): filter(None) keeps the found ones
                    records = decode_records(group, list(filter(None, blobs)))
                missing[key] = len(stored) - len(records)
                # row -> distinct id -> record (-1: not stored)
                record_of = np.where(stored, np.cumsum(stored) - 1, -1)
                rows = record_of[_positions(columns[key], distinct[key])]
                features[key] = frame_columns(group, records, rows)
            except PackedLayoutError as err:
                raise PackedUnavailable(str(err)) from err
        return layout, features, missing

    def _table(self, service: str, layout: PackedLayout, group: PackedGroup) -> _LocalTable:
        """The in-memory group of the live generation, loaded on its first request."""
        table = self._tables.get((service, group.join_key))
        if table is None or table.generation != layout.generation:
            ids, blobs = self._backend.load_all(service, layout.generation, group.join_key)
            if any(blob is None for blob in blobs):
                raise PackedUnavailable(f"generation {layout.generation!r} of {service!r} went while loading")
            records = decode_records(group, blobs)  # type: ignore[arg-type]
            table = _LocalTable(layout.generation, {entity: k for k, entity in enumerate(ids)}, records)
            self._tables[(service, group.join_key)] = table
            logger.info(
                "loaded %d %s records of %s generation %s",
                len(ids),
                group.join_key,
                service,
                layout.generation,
            )
        return table


def _ordered(features: dict[str, np.ndarray], layout: PackedLayout) -> dict[str, np.ndarray]:
    """The features in the service's order."""
    return {name: features[name] for name in layout.features if name in features}


def _frame(keys: dict[str, list[Any]], features: dict[str, np.ndarray], layout: PackedLayout) -> pd.DataFrame:
    """The entity columns, then the features in the service's order (no copies)."""
    return pd.DataFrame({**keys, **_ordered(features, layout)}, copy=False)


def _positions(ids: list[str], distinct: list[str]) -> np.ndarray:
    """Each id's position in `distinct` (its ids in order of first appearance)."""
    if len(distinct) == len(ids):
        return np.arange(len(ids))
    if len(distinct) == 1:
        return np.zeros(len(ids), dtype=np.int64)
    where = {entity: k for k, entity in enumerate(distinct)}
    return np.fromiter((where[entity] for entity in ids), dtype=np.int64, count=len(ids))
