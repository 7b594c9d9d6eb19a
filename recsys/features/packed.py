"""One packed value per entity: the fixed binary layout of a feature service's online values, and its codec.

A feature service's features that share a join key (``user_id`` or ``item_id``) become one *group*; each
entity of a group is one record of a numpy structured dtype, little-endian, no padding:

- ``null``: one byte per column, 1 where Feast holds no value (its ``get_online_features`` gives None);
- per scalar column ``c<j>``: ``<i4``/``<i8``/``<f4``/``<f8`` or ``?`` (bool), as Feast's value type;
- per list column ``n<j>`` (``<i4``, the list's length) and ``c<j>`` (the longest list's length of values,
  zero-padded);
- per string or string-list column ``n<j>`` only (``<i4``, how many strings); the strings of every such
  column follow the fixed part, UTF-8, joined by NUL (a string holding NUL is refused).

Decoding a request is one ``np.frombuffer`` over the joined records, one take by row, and one cast per
column to what ``pd.DataFrame`` infers from Feast's Python values (int64, float64 with NaN where a value
is missing, bool, object lists, object None when the whole column is missing): the frame equals
``get_online_features(...).to_df()``. Pure: no IO here (``recsys.features.packed_store`` reads and writes).

>>> group = PackedGroup("item_id", (PackedColumn("n", "INT64"), PackedColumn("v", "FLOAT_LIST", 2)))
>>> records = decode_records(group, encode_records(group, [(3, [0.5, 1.0]), (None, None)]))
>>> {name: values.tolist() for name, values in frame_columns(group, records, np.array([1, 0, -1])).items()}
{'n': [nan, 3.0, nan], 'v': [None, [0.5, 1.0], None]}
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

# Bump when the record layout changes: a reader refuses a layout of another format.
FORMAT = 1
# Feast value type name (of a scalar, or of a list without its ``_LIST``) -> element dtype, Python type.
_SCALARS: dict[str, tuple[str, type]] = {
    "INT32": ("<i4", int),
    "INT64": ("<i8", int),
    "FLOAT": ("<f4", float),
    "DOUBLE": ("<f8", float),
    "BOOL": ("?", bool),
    "STRING": ("", str),  # variable width: in the record's tail
}
_SEP = "\x00"
_LIST = "_LIST"


class PackedLayoutError(ValueError):
    """A layout that cannot be built (a feature of a type with no fixed width) or read (corrupted)."""


@dataclass(frozen=True)
class PackedColumn:
    """One feature: its name, Feast value type name (``FLOAT``, ``FLOAT_LIST``...), for a list the number
    of values each record has room for, and for a numeric list with at most 256 distinct values their
    vocabulary (the record then holds one byte per value: multi-hot vectors shrink 4x, and decode to
    shared Python objects instead of new ones)."""

    name: str
    value_type: str
    length: int = 0
    vocabulary: tuple[Any, ...] = ()

    @cached_property
    def objects(self) -> np.ndarray:
        """The vocabulary as an object array, for decoding codes by indexing."""
        cells = np.empty(len(self.vocabulary), dtype=object)
        cells[:] = list(self.vocabulary)
        return cells

    @property
    def is_list(self) -> bool:
        return self.value_type.endswith(_LIST)

    @property
    def element(self) -> str:
        """The numpy dtype of one value ("" for strings, which live in the record's tail)."""
        return _SCALARS[self.value_type.removesuffix(_LIST)][0]

    @property
    def is_string(self) -> bool:
        return self.element == ""


@dataclass(frozen=True)
class PackedGroup:
    """The features of one join key, in the service's order."""

    join_key: str
    columns: tuple[PackedColumn, ...]

    @cached_property
    def dtype(self) -> np.dtype[Any]:
        """The fixed part of a record (kept: building a dtype costs more than decoding a request)."""
        return self.record_dtype()

    def record_dtype(self) -> np.dtype[Any]:
        fields: list[tuple[Any, ...]] = [("null", "u1", (len(self.columns),))]
        for j, column in enumerate(self.columns):
            if column.is_string:
                fields.append((f"n{j}", "<i4"))
            elif column.is_list:
                kind = "u1" if column.vocabulary else column.element
                fields += [(f"n{j}", "<i4"), (f"c{j}", kind, (column.length,))]
            else:
                fields.append((f"c{j}", column.element))
        return np.dtype(fields)

    @cached_property
    def strings(self) -> tuple[int, ...]:
        """Positions of the string and string-list columns."""
        return tuple(j for j, column in enumerate(self.columns) if column.is_string)


@dataclass(frozen=True)
class PackedLayout:
    """The layout of one published generation of a service's packed values.

    ``features`` is the service's feature order across groups (the frame's column order).
    """

    service: str
    generation: str
    groups: tuple[PackedGroup, ...]
    features: tuple[str, ...]

    def group(self, join_key: str) -> PackedGroup | None:
        return next((group for group in self.groups if group.join_key == join_key), None)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "service": self.service,
                "generation": self.generation,
                "features": list(self.features),
                "groups": [
                    {
                        "join_key": group.join_key,
                        "itemsize": group.record_dtype().itemsize,
                        "columns": [
                            [c.name, c.value_type, c.length, list(c.vocabulary)] for c in group.columns
                        ],
                    }
                    for group in self.groups
                ],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes, service: str, generation: str) -> PackedLayout:
        """The layout stored for (`service`, `generation`); PackedLayoutError when it is not one."""
        where = f"packed layout of {service!r} generation {generation!r}"
        try:
            raw = json.loads(text)
            if raw["format"] != FORMAT:
                raise PackedLayoutError(f"{where} has format {raw['format']!r}, this reader reads {FORMAT}")
            groups = tuple(
                PackedGroup(
                    str(group["join_key"]),
                    tuple(
                        _column(str(name), str(kind), int(length), tuple(vocabulary))
                        for name, kind, length, vocabulary in group["columns"]
                    ),
                )
                for group in raw["groups"]
            )
            layout = cls(
                str(raw["service"]), str(raw["generation"]), groups, tuple(map(str, raw["features"]))
            )
            sizes = [int(group["itemsize"]) for group in raw["groups"]]
        except PackedLayoutError:
            raise
        except (ValueError, KeyError, TypeError) as err:
            raise PackedLayoutError(f"{where} is corrupted: {err!r}") from err
        if (layout.service, layout.generation) != (service, generation):
            raise PackedLayoutError(f"{where} describes {layout.service!r} generation {layout.generation!r}")
        if sizes != [group.record_dtype().itemsize for group in groups]:
            raise PackedLayoutError(f"{where} is corrupted: record sizes do not match its columns")
        if sorted(layout.features) != sorted(c.name for group in groups for c in group.columns):
            raise PackedLayoutError(f"{where} is corrupted: its feature order does not match its columns")
        return layout


def _column(name: str, value_type: str, length: int = 0, vocabulary: tuple[Any, ...] = ()) -> PackedColumn:
    if value_type.removesuffix(_LIST) not in _SCALARS:
        raise PackedLayoutError(f"feature {name!r} is a {value_type}, which has no fixed-width packing")
    numeric_list = value_type.endswith(_LIST) and not value_type.startswith("STRING")
    if length < 0 or (length and not numeric_list):
        raise PackedLayoutError(f"feature {name!r}: bad list length {length}")
    kind = _SCALARS[value_type.removesuffix(_LIST)][1]
    if len(vocabulary) > 256 or (vocabulary and not numeric_list):
        raise PackedLayoutError(f"feature {name!r}: a vocabulary of {len(vocabulary)} for a {value_type}")
    if any(type(value) is not kind for value in vocabulary):
        raise PackedLayoutError(f"feature {name!r}: vocabulary values that are not {kind.__name__}")
    return PackedColumn(name, value_type, length, vocabulary)


def _bits(values: np.ndarray) -> np.ndarray:
    """Values as unsigned integers of their width: compared bit for bit (-0.0 is not 0.0, NaN is NaN)."""
    return values.view(f"u{values.dtype.itemsize}")


def _vocabulary(element: str, flat: list[Any]) -> tuple[Any, ...]:
    """The distinct values of a numeric list column, sorted by bits; () when there are more than 256 (or
    values that do not fit the element dtype: encoding then says so)."""
    try:
        values = np.array(flat, dtype=element)
    except (OverflowError, ValueError, TypeError):
        return ()
    distinct = np.unique(_bits(values))
    return tuple(distinct.view(element).tolist()) if 0 < len(distinct) <= 256 else ()


def build_group(
    join_key: str, names: Sequence[str], value_types: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> PackedGroup:
    """The group for these features, lists sized to the longest list among `rows` (values per entity)."""
    columns = []
    for j, (name, value_type) in enumerate(zip(names, value_types, strict=True)):
        length = 0
        vocabulary: tuple[Any, ...] = ()
        if value_type.endswith(_LIST) and not value_type.startswith("STRING"):
            length = max((len(row[j]) for row in rows if row[j] is not None), default=0)
            element = _SCALARS[value_type.removesuffix(_LIST)][0]
            vocabulary = _vocabulary(element, [item for row in rows if row[j] for item in row[j]])
        columns.append(_column(name, value_type, length, vocabulary))
    return PackedGroup(join_key, tuple(columns))


@dataclass(frozen=True)
class Records:
    """Decoded records: the fixed parts, and each record's strings (all its string columns in order;
    None when the group has no string column)."""

    fixed: np.ndarray
    strings: list[list[str]] | None

    def __len__(self) -> int:
        return len(self.fixed)

    def subset(self, positions: np.ndarray) -> Records:
        """The records at `positions`, in that order."""
        strings = None if self.strings is None else [self.strings[p] for p in positions.tolist()]
        return Records(self.fixed[positions], strings)


def encode_records(group: PackedGroup, rows: Sequence[tuple[Any, ...]]) -> list[bytes]:
    """One record per row of Python values (Feast's, in the group's column order; None: no value).

    Raises PackedLayoutError when a value does not survive its column's dtype unchanged (a type Feast
    would not return for the declared one, an int out of range, a list longer than the layout's, a
    string holding NUL): the decoded records are compared with `rows` before they are returned.
    """
    dtype = group.record_dtype()
    table = np.zeros(len(rows), dtype=dtype)
    tails: list[list[str]] = [[] for _ in rows]
    for j, column in enumerate(group.columns):
        values = [row[j] for row in rows]
        null = np.array([value is None for value in values], dtype=bool)
        table["null"][:, j] = null
        kind = _SCALARS[column.value_type.removesuffix(_LIST)][1]
        if column.is_string:
            lists = [[] if v is None else (list(v) if column.is_list else [v]) for v in values]
            table[f"n{j}"] = [len(items) for items in lists]
            for tail, items in zip(tails, lists, strict=True):
                tail.extend(items)
            flat = [item for items in lists for item in items]
            if any(type(item) is str and _SEP in item for item in flat):
                raise PackedLayoutError(f"{column.name}: a string holding NUL cannot be packed")
        elif column.is_list:
            sizes = np.array([0 if value is None else len(value) for value in values], dtype=np.int64)
            if len(sizes) and sizes.max() > column.length:
                raise PackedLayoutError(f"{column.name}: a list of {sizes.max()} > {column.length}")
            table[f"n{j}"] = sizes
            flat = [item for value in values if value for item in value]
            try:
                cells = np.array(flat, dtype=column.element)
            except (OverflowError, ValueError, TypeError) as err:
                raise PackedLayoutError(f"{column.name}: a list that does not fit {column.element}") from err
            if column.vocabulary:
                known = _bits(np.array(column.vocabulary, dtype=column.element))
                codes = np.searchsorted(known, _bits(cells)).clip(0, len(known) - 1)
                if not (known[codes] == _bits(cells)).all():
                    raise PackedLayoutError(f"{column.name}: values outside its vocabulary")
                cells = codes.astype(np.uint8)
            # Scatter the flat values to (row, position in its list).
            starts = np.repeat(np.cumsum(sizes) - sizes, sizes)
            table[f"c{j}"][np.repeat(np.arange(len(rows)), sizes), np.arange(len(flat)) - starts] = cells
        else:
            flat = [value for value in values if value is not None]
            try:
                table[f"c{j}"][~null] = flat
            except (OverflowError, ValueError, TypeError) as err:
                raise PackedLayoutError(
                    f"{column.name}: values that do not fit {column.element}: {err}"
                ) from err
        if any(type(item) is not kind for item in flat):
            raise PackedLayoutError(
                f"{column.name}: values that are not {kind.__name__} for a {column.value_type}"
            )
    raw = table.tobytes()
    size = dtype.itemsize
    records = [
        raw[i * size : (i + 1) * size] + _SEP.join(tail).encode("utf-8") for i, tail in enumerate(tails)
    ]
    decoded = python_values(group, decode_records(group, records))
    for j, column in enumerate(group.columns):
        if not _same(decoded[j], [row[j] for row in rows]):
            raise PackedLayoutError(f"{column.name}: values do not survive packing as {column.value_type}")
    return records


def _same(left: list[Any], right: list[Any]) -> bool:
    """Equal lists, NaN equal to NaN (a stored NaN is a value, not a missing one)."""
    if left == right:
        return True
    if len(left) != len(right):
        return False

    def key(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return "nan"
        if isinstance(value, list):
            return [key(item) for item in value]
        return value

    return all(key(a) == key(b) for a, b in zip(left, right, strict=True))


def decode_records(group: PackedGroup, records: Sequence[bytes]) -> Records:
    """The found records of a request; PackedLayoutError when one does not fit the layout."""
    dtype = group.dtype
    size = dtype.itemsize
    positions = group.strings
    if not positions:
        sizes = sorted(set(map(len, records)))
        if sizes and sizes != [size]:
            raise PackedLayoutError(
                f"packed {group.join_key} records of {sizes} bytes, the layout says {size}"
            )
        return Records(np.frombuffer(b"".join(records), dtype=dtype), None)
    if records and min(map(len, records)) < size:
        raise PackedLayoutError(f"packed {group.join_key} records shorter than the layout's {size} bytes")
    fixed = np.frombuffer(b"".join([record[:size] for record in records]), dtype=dtype)
    counts = np.sum([fixed[f"n{j}"].astype(np.int64) for j in positions], axis=0)
    if len(records) and counts.min() < 0:
        raise PackedLayoutError(f"packed {group.join_key} records with negative string counts")
    # All records' strings in one decode and one split; each record with strings adds exactly its count.
    try:
        joined = _SEP.join(
            [record[size:].decode("utf-8") for record, n in zip(records, counts.tolist(), strict=True) if n]
        )
    except UnicodeDecodeError as err:
        raise PackedLayoutError(f"packed {group.join_key} records with strings that are not UTF-8") from err
    flat = joined.split(_SEP) if counts.any() else []
    if len(flat) != int(counts.sum()):
        raise PackedLayoutError(f"packed {group.join_key} records whose strings do not match their counts")
    ends = np.cumsum(counts).tolist()
    starts = [0, *ends[:-1]] if ends else []
    return Records(fixed, [flat[a:b] for a, b in zip(starts, ends, strict=True)])


def _string_values(group: PackedGroup, records: Records) -> dict[int, list[Any]]:
    """Per string column, each record's value: a string or a list of strings (None where null)."""
    assert records.strings is not None
    fixed = records.fixed
    out: dict[int, list[Any]] = {}
    # Column by column, each record's strings of the column start where the previous columns' end.
    start = np.zeros(len(fixed), dtype=np.int64)
    for j in group.strings:
        count = fixed[f"n{j}"].astype(np.int64)
        null = fixed["null"][:, j].tolist()
        begin = start.tolist()
        if group.columns[j].is_list:
            end = (start + count).tolist()
            out[j] = [
                None if gone else strings[a:b]
                for strings, a, b, gone in zip(records.strings, begin, end, null, strict=True)
            ]
        else:
            out[j] = [
                None if gone else strings[a]
                for strings, a, gone in zip(records.strings, begin, null, strict=True)
            ]
        start += count
    return out


def python_values(group: PackedGroup, records: Records) -> list[list[Any]]:
    """Per column, each record's Python value (None where null): what Feast's converter returns."""
    fixed = records.fixed
    strings = _string_values(group, records) if group.strings else {}
    out: list[list[Any]] = []
    for j, column in enumerate(group.columns):
        if column.is_string:
            out.append(strings[j])
            continue
        null = fixed["null"][:, j].tolist()
        values = (column.objects[fixed[f"c{j}"]] if column.vocabulary else fixed[f"c{j}"]).tolist()
        if column.is_list:
            values = [row[:n] for row, n in zip(values, fixed[f"n{j}"].tolist(), strict=True)]
        out.append([None if gone else value for value, gone in zip(values, null, strict=True)])
    return out


def object_array(values: list[Any]) -> np.ndarray:
    """A 1-d object array of `values` (lists stay list cells, never a second axis)."""
    return np.fromiter(values, dtype=object, count=len(values))


def _per_row(per_record: list[Any], rows: np.ndarray, null: np.ndarray, distinct: bool) -> np.ndarray:
    """Each row's list (None where null). When a record fills several rows (the user of a ranking
    request) each row gets its own copy, so that a caller changing one row's list changes no other."""
    if distinct:
        cells = object_array(per_record)[np.where(null, 0, rows)]
        cells[null] = None
        return cells
    return object_array([None if r < 0 else per_record[r].copy() for r in np.where(null, -1, rows).tolist()])


def _one_record(group: PackedGroup, records: Records, n: int) -> dict[str, np.ndarray]:
    """`n` rows of one record (the user of a ranking request): each value made once, then repeated;
    each row gets its own copy of a list."""
    values = python_values(group, records)
    out: dict[str, np.ndarray] = {}
    for column, (value,) in zip(group.columns, values, strict=True):
        if value is None:
            out[column.name] = np.full(n, None, dtype=object)
        elif isinstance(value, list):
            out[column.name] = object_array([value.copy() for _ in range(n)])
        elif isinstance(value, str):
            out[column.name] = np.full(n, value, dtype=object)
        else:  # bool, int, float: what pandas makes of n equal Python values
            out[column.name] = np.full(n, value, dtype=bool if isinstance(value, bool) else type(value))
    return out


def frame_columns(group: PackedGroup, records: Records, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The group's columns for rows that take record `rows[i]` (-1: an unknown entity), typed as
    ``pd.DataFrame`` types Feast's Python values."""
    n = len(rows)
    if not len(records):
        return {column.name: np.full(n, None, dtype=object) for column in group.columns}
    if len(records) == 1 and not (rows < 0).any():
        return _one_record(group, records, n)
    unknown = rows < 0
    # The common ranking case, every candidate distinct and stored: the records are the rows.
    identity = n == len(records) and bool((rows == np.arange(n)).all())
    taken = records.fixed if identity else records.fixed[np.where(unknown, 0, rows)]
    used = rows[~unknown]
    # Increasing record numbers (distinct candidates, some unknown) are distinct without sorting.
    distinct = identity or bool((np.diff(used) > 0).all()) or len(np.unique(used)) == len(used)
    nulls = taken["null"].astype(bool)
    if not identity:
        nulls[unknown] = True
    strings = _string_values(group, records) if group.strings else {}
    out: dict[str, np.ndarray] = {}
    for j, column in enumerate(group.columns):
        null = nulls[:, j]
        if null.all():
            out[column.name] = np.full(n, None, dtype=object)
        elif column.is_string:
            per_record = strings[j]
            if column.is_list:
                out[column.name] = _per_row(per_record, rows, null, distinct)
            else:
                cells = object_array(per_record)[np.where(null, 0, rows)]
                cells[null] = None
                out[column.name] = cells
        elif column.is_list:
            # Python lists are made once per record, not per row (one user's features fill every row of
            # a ranking request).
            lengths = records.fixed[f"n{j}"]
            cells = records.fixed[f"c{j}"]
            if (lengths == column.length).all():
                nested = (column.objects[cells] if column.vocabulary else cells).tolist()
            else:
                # Only the values within each list, flat, then cut per record: one list made per record.
                sizes = lengths.clip(0, column.length)
                kept = cells[np.arange(column.length) < sizes[:, None]]
                flat = (column.objects[kept] if column.vocabulary else kept).tolist()
                ends = np.cumsum(sizes).tolist()
                nested = [flat[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
            out[column.name] = _per_row(nested, rows, null, distinct)
        elif column.value_type == "BOOL":
            values = taken[f"c{j}"]
            if null.any():
                flags = values.astype(object)
                flags[null] = None
                out[column.name] = flags
            else:
                out[column.name] = values.astype(bool)
        else:
            values = taken[f"c{j}"]
            if null.any():
                numbers = values.astype(np.float64)
                numbers[null] = np.nan
                out[column.name] = numbers
            else:
                out[column.name] = values.astype(np.int64 if values.dtype.kind == "i" else np.float64)
    return out
