"""Packed online values: the codec matches pandas' reading of Feast's values, and the packed read equals
Feast's online read and its historical retrieval at the final snapshot, on SQLite and Redis."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from recsys.config import FeaturesConfig
from recsys.features.packed import (
    PackedColumn,
    PackedGroup,
    PackedLayout,
    PackedLayoutError,
    build_group,
    decode_records,
    encode_records,
    frame_columns,
)
from recsys.features.packed_store import (
    PackedReader,
    PackedUnavailable,
    load_layout,
    pack_services,
    packed_backend,
)
from recsys.features.store import (
    apply_definitions,
    build_store,
    historical_features,
    materialize,
    online_features,
)
from recsys.state import StateDir

OLD = datetime(2020, 1, 1, tzinfo=UTC)
NEW = datetime(2020, 6, 1, tzinfo=UTC)
N_USERS, N_ITEMS = 20, 120
PACKED_TEST_REDIS_DB = 9
_ARROW = {
    "INT32": pa.int32(),
    "INT64": pa.int64(),
    "FLOAT": pa.float32(),
    "DOUBLE": pa.float64(),
    "BOOL": pa.bool_(),
    "STRING": pa.string(),
}


def _value(rng: np.random.Generator, value_type: str) -> Any:
    scalar = value_type.removesuffix("_LIST")
    if value_type.endswith("_LIST"):
        return [_value(rng, scalar) for _ in range(int(rng.integers(0, 5)))]
    if scalar.startswith("INT"):
        return int(rng.integers(-(2**31), 2**31))
    if scalar in ("FLOAT", "DOUBLE"):
        value = float(rng.normal())
        return float(np.float32(value)) if scalar == "FLOAT" else value
    if scalar == "BOOL":
        return bool(rng.random() < 0.5)
    return str(rng.choice(["", "mobile", "désktop", "i7", "tv:4k"]))


# --- the codec, no store -------------------------------------------------------------------------------

ALL_TYPES = [f"{kind}{suffix}" for kind in _ARROW for suffix in ("", "_LIST")]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("derived", [False, True])
def test_frame_columns_are_what_pandas_makes_of_feasts_values(seed: int, derived: bool) -> None:
    """`derived`: the layout `build_group` makes (numeric lists coded by vocabulary); else plain lists."""
    rng = np.random.default_rng(seed)
    names = [f"f_{kind.lower()}" for kind in ALL_TYPES]
    entities = 12
    # each column: some nulls, none, or only nulls (pandas types each case differently)
    share = [rng.choice([0.0, 0.3, 1.0]) for _ in ALL_TYPES]
    rows = [
        tuple(None if rng.random() < share[j] else _value(rng, kind) for j, kind in enumerate(ALL_TYPES))
        for _ in range(entities)
    ]
    group = PackedGroup(
        "item_id",
        tuple(
            PackedColumn(name, kind, 4 if kind.endswith("_LIST") and not kind.startswith("STRING") else 0)
            for name, kind in zip(names, ALL_TYPES, strict=True)
        ),
    )
    if derived:
        group = build_group("item_id", names, ALL_TYPES, rows)
        assert any(column.vocabulary for column in group.columns)
    records = decode_records(group, encode_records(group, rows))
    picks = rng.integers(-1, entities, 30)  # repeats and unknown entities (-1)
    got = pd.DataFrame(frame_columns(group, records, picks))
    expected = pd.DataFrame(
        {name: [None if r < 0 else rows[r][j] for r in picks.tolist()] for j, name in enumerate(names)}
    )
    pd.testing.assert_frame_equal(got, expected)
    # one entity in every row (the user of a ranking request), each row with its own lists
    one = pd.DataFrame(
        frame_columns(group, decode_records(group, encode_records(group, rows[:1])), np.zeros(3, int))
    )
    pd.testing.assert_frame_equal(one, pd.DataFrame({name: [rows[0][j]] * 3 for j, name in enumerate(names)}))
    lists = [column for column in one.columns if isinstance(one[column][0], list)]
    assert all(one[column][0] is not one[column][1] for column in lists)


def test_values_that_would_change_are_refused() -> None:
    def group(kind: str, length: int = 0) -> PackedGroup:
        return PackedGroup("item_id", (PackedColumn("f", kind, length),))

    with pytest.raises(PackedLayoutError, match="do not fit <i4"):
        encode_records(group("INT32"), [(2**40,)])
    with pytest.raises(PackedLayoutError, match="not int"):
        encode_records(group("INT64"), [(1.5,)])
    with pytest.raises(PackedLayoutError, match="NUL"):
        encode_records(group("STRING"), [("a\x00b",)])
    coded = PackedGroup("item_id", (PackedColumn("f", "FLOAT_LIST", 2, (0.0, 1.0)),))
    with pytest.raises(PackedLayoutError, match="outside its vocabulary"):
        encode_records(coded, [([1.0, -0.0],)])  # -0.0 is not 0.0: compared bit for bit
    assert len(encode_records(coded, [([1.0, 0.0],)])[0]) == 1 + 4 + 2  # null flag, length, two codes
    with pytest.raises(PackedLayoutError, match="a list of 3"):
        encode_records(group("FLOAT_LIST", 2), [([1.0, 2.0, 3.0],)])
    with pytest.raises(PackedLayoutError, match="no fixed-width"):
        PackedLayout.from_json(
            '{"format": 1, "service": "s", "generation": "g", "features": ["f"], '
            '"groups": [{"join_key": "item_id", "itemsize": 1, '
            '"columns": [["f", "UNIX_TIMESTAMP", 0, []]]}]}',
            "s",
            "g",
        )


def test_layout_round_trip_and_corruption() -> None:
    layout = PackedLayout(
        "ranker_v1",
        "7",
        (
            PackedGroup("user_id", (PackedColumn("u", "FLOAT_LIST", 3),)),
            PackedGroup("item_id", (PackedColumn("i", "INT64"), PackedColumn("s", "STRING"))),
        ),
        ("u", "i", "s"),
    )
    assert PackedLayout.from_json(layout.to_json(), "ranker_v1", "7") == layout
    resized = json.loads(layout.to_json())
    resized["groups"][1]["itemsize"] -= 1
    for text, message in (
        ("{not json", "corrupted"),
        ('{"format": 1}', "corrupted"),
        (json.dumps(resized), "record sizes"),
        (layout.to_json().replace('"format": 1', '"format": 2'), "format 2"),
    ):
        with pytest.raises(PackedLayoutError, match=message):
            PackedLayout.from_json(text, "ranker_v1", "7")
    with pytest.raises(PackedLayoutError, match="describes"):
        PackedLayout.from_json(layout.to_json(), "ranker_v1", "8")
    group = layout.groups[1]
    good = encode_records(group, [(5, "tv")])
    with pytest.raises(PackedLayoutError, match="shorter"):
        decode_records(group, [good[0][:4]])
    with pytest.raises(PackedLayoutError, match="counts"):
        decode_records(group, [good[0] + b"\x00extra"])


# --- against Feast -------------------------------------------------------------------------------------


def write_tables(store: Any, seed: int, snapshots: tuple[datetime, ...]) -> None:
    """Seeded rows for every file the registry's views read (two snapshots per entity, missing values),
    typed from the views' own fields, so the test follows the definitions as they grow."""
    from feast import FileSource

    rng = np.random.default_rng(seed)
    files: dict[str, dict[str, Any]] = {}
    for view in store.list_feature_views():
        source = view.batch_source
        if not isinstance(source, FileSource):
            continue
        spec = files.setdefault(
            source.path,
            {
                "key": view.entity_columns[0].name,
                "ts": source.timestamp_field,
                "created": source.created_timestamp_column,
                "fields": {},
            },
        )
        for field in view.features:
            spec["fields"][field.name] = field.dtype.to_value_type().name
    for path, spec in files.items():
        n = N_USERS if spec["key"] == "user_id" else N_ITEMS
        prefix = "u" if spec["key"] == "user_id" else "i"
        columns: dict[str, pa.Array] = {
            spec["key"]: pa.array([f"{prefix}{j}" for j in range(n)] * len(snapshots)),
            spec["ts"]: pa.array([t for t in snapshots for _ in range(n)], pa.timestamp("us", "UTC")),
        }
        if spec["created"]:
            columns[spec["created"]] = columns[spec["ts"]]
        for j, (name, kind) in enumerate(spec["fields"].items()):
            scalar = kind.removesuffix("_LIST")
            if scalar not in _ARROW:
                continue  # a type the generator does not make: left out of the file, read as missing
            arrow = pa.list_(_ARROW[scalar]) if kind.endswith("_LIST") else _ARROW[scalar]
            every = 5 + j % 7
            values = [None if i % every == 3 else _value(rng, kind) for i in range(n * len(snapshots))]
            columns[name] = pa.array(values, arrow)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)


def _build(root: Path, kind: str, redis_url: str) -> Any:
    store = build_store(StateDir(root), FeaturesConfig(online_store=kind, redis_url=redis_url))  # type: ignore[arg-type]
    apply_definitions(store)
    write_tables(store, 7, (OLD, NEW))
    materialize(store, NEW + timedelta(days=1))
    return store


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[dict[str, Any]]:
    url = urlunsplit(urlsplit(redis_url)._replace(path=f"/{PACKED_TEST_REDIS_DB}"))
    redis.Redis.from_url(url).flushdb()
    root = tmp_path_factory.mktemp("packed")
    yield {kind: _build(root / kind, kind, url) for kind in ("sqlite", "redis")}


def _requests(layout: PackedLayout) -> list[list[dict[str, str]]]:
    keys = {group.join_key for group in layout.groups}
    users = [f"u{j}" for j in range(N_USERS)] + ["nobody"]
    items = [f"i{j}" for j in range(0, N_ITEMS, 2)] + ["i6", "unknown"]
    out: list[list[dict[str, str]]] = []
    if keys == {"user_id", "item_id"}:
        out.append([{"user_id": "u4", "item_id": item} for item in items])
        out.append([{"user_id": "nobody", "item_id": "i1"}])
    if "user_id" in keys:
        out.append([{"user_id": user} for user in users])
    if "item_id" in keys:
        out.append([{"item_id": item} for item in items])
        out.append([{"item_id": "unknown"}])
    return out


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.ndarray | list):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_packed_read_equals_feast_online_and_historical(stores: dict[str, Any], kind: str) -> None:
    store = stores[kind]
    summaries = {s.service: s for s in pack_services(store)}
    assert summaries["ranker_v1"].generation and summaries["two_tower_v1"].generation
    assert summaries["ranker_v1"].entities == {"user_id": N_USERS, "item_id": N_ITEMS}
    reader = PackedReader(store)
    in_memory = PackedReader(store, local_keys=("item_id",))  # items held in memory, users read
    backend = packed_backend(store)
    for service in (name for name, s in summaries.items() if s.generation):
        for rows in _requests(load_layout(backend, service)):
            expected = online_features(store, service, rows)
            for packed in (reader, in_memory):
                got = packed.read(service, rows)
                assert got.packed, packed.last_error
                pd.testing.assert_frame_equal(got.frame, expected)
    ranked = reader.read("ranker_v1", _requests(load_layout(backend, "ranker_v1"))[0])
    assert ranked.missing == {"user_id": 0, "item_id": 1}
    assert (
        in_memory.read("ranker_v1", _requests(load_layout(backend, "ranker_v1"))[0]).missing == ranked.missing
    )
    assert ranked.frame.isna().any().any()  # missing values were compared too
    # historical retrieval at the final snapshot gives the same values
    frame = ranked.frame
    entity_df = frame[["user_id", "item_id"]].assign(event_timestamp=NEW + timedelta(hours=1))
    history = historical_features(store, entity_df, "ranker_v1")
    for column in frame.columns:
        assert [_plain(v) for v in frame[column]] == [_plain(v) for v in history[column]], column
    assert reader.fallbacks == 0 and in_memory.fallbacks == 0


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_the_ranking_stage_reads_users_once_and_gets_what_the_row_read_gives(
    stores: dict[str, Any], kind: str
) -> None:
    from test_serving_stages import ConstantRanker

    from serving.stages import Candidates, RankingStage

    store = stores[kind]
    pack_services(store, ["ranker_v1"])

    def candidates(items: list[str]) -> Candidates:
        return Candidates(items, [0.0] * len(items), "1")

    # A batch as the ranking deployment gets one: a user twice, candidates shared between requests, an
    # unknown user and an unknown item, and a request left without candidates.
    requests = [
        ("u4", candidates([f"i{j}" for j in range(0, 40)] + ["unknown"])),
        ("nobody", candidates(["i3", "i5", "i7"])),
        ("u2", candidates([])),
        ("u4", candidates(["i5", "i1", "i80"])),
        ("u7", candidates([f"i{j}" for j in range(30, 60)])),
    ]
    for local in ((), ("item_id",)):
        reader = PackedReader(store, local_keys=local)
        stage = RankingStage(ConstantRanker(), reader)
        keyed = stage._read_keyed(requests)
        rows = stage._read_rows(requests)
        assert keyed is not None and reader.fallbacks == 0
        for (user_id, cands), by_key, by_row in zip(requests, keyed, rows, strict=True):
            if not cands.item_ids:
                continue
            assert list(by_key.user) == list(by_row.user)
            for name, value in by_row.user.items():
                assert _plain(by_key.user[name]) == _plain(value), (user_id, name)
                assert type(by_key.user[name]) is type(value), (user_id, name)
            pd.testing.assert_frame_equal(by_key.items, by_row.items)
            assert by_key.missing == by_row.missing, user_id
        assert rows[1].missing > 0 and rows[0].missing > 0  # the unknown user and item were counted
    # a service without packed values: no keyed read (the stage reads rows through the fallback)
    assert PackedReader(store).read_keyed("no_such_service", {"user_id": ["u1"]}) is None


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_new_generation_reaches_a_running_reader(stores: dict[str, Any], kind: str) -> None:
    store = stores[kind]
    first = pack_services(store, ["ranker_v1"])[0].generation
    reader = PackedReader(store)
    in_memory = PackedReader(store, local_keys=("item_id",))
    rows = [{"user_id": "u2", "item_id": f"i{j}"} for j in range(10)]
    before = reader("ranker_v1", rows)
    pd.testing.assert_frame_equal(in_memory("ranker_v1", rows), before)
    later = NEW + timedelta(days=30)
    write_tables(store, 8, (OLD, NEW, later))
    materialize(store, later + timedelta(days=1))
    second = pack_services(store, ["ranker_v1"])[0].generation
    after = reader.read("ranker_v1", rows)
    assert after.packed and second != first
    pd.testing.assert_frame_equal(after.frame, online_features(store, "ranker_v1", rows))
    assert not after.frame.equals(before)
    assert not after.frame["item_n_events"].equals(before["item_n_events"])  # items changed too
    pd.testing.assert_frame_equal(in_memory("ranker_v1", rows), after.frame)  # its item table reloaded
    # the old generation is gone
    if kind == "redis":
        client = packed_backend(store)._client  # type: ignore[union-attr]
        assert not list(client.scan_iter(match=f"recsys:packed:ranker_v1:{first}:*"))
    else:
        import sqlite3

        with sqlite3.connect(packed_backend(store).path) as conn:  # type: ignore[union-attr]
            assert conn.execute(
                "SELECT count(*) FROM packed_values WHERE generation = ?", (first,)
            ).fetchone() == (0,)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_missing_or_corrupted_layout_falls_back(tmp_path: Path, stores: dict[str, Any], kind: str) -> None:
    store = stores[kind]
    pack_services(store, ["ranker_v1"])
    backend = packed_backend(store)
    generation = load_layout(backend, "ranker_v1").generation
    rows = [{"user_id": "u1", "item_id": f"i{j}"} for j in range(5)]
    expected = online_features(store, "ranker_v1", rows)

    def corrupt(text: str) -> None:
        if kind == "redis":
            backend._client.set(f"recsys:packed:ranker_v1:{generation}:layout", text)  # type: ignore[union-attr]
        else:
            import sqlite3

            with sqlite3.connect(backend.path) as conn:  # type: ignore[union-attr]
                conn.execute("UPDATE packed_layouts SET layout = ?", (text,))

    corrupt("{not json")
    with pytest.raises(PackedUnavailable, match="corrupted"):
        load_layout(backend, "ranker_v1")
    reader = PackedReader(store, retry_s=0.0)
    got = reader.read("ranker_v1", rows)
    assert not got.packed and reader.last_error is not None and "corrupted" in reader.last_error
    pd.testing.assert_frame_equal(got.frame, expected)
    # a service never packed: the reader says so and answers from the online store
    with pytest.raises(PackedUnavailable, match="run `recsys features`"):
        load_layout(backend, "no_such_service")
    # packing again repairs it
    pack_services(store, ["ranker_v1"])
    got = reader.read("ranker_v1", rows)
    assert got.packed
    pd.testing.assert_frame_equal(got.frame, expected)
