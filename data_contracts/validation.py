"""Run a table through its Great Expectations suite and split it into clean rows and quarantine.

The rows that go to quarantine are exactly those listed in the suite's results (``unexpected_index_list``),
so the suite is the single definition of what a valid row is. A failed table-level expectation (a missing
column, a wrongly typed column) quarantines every row: no row of such a table can be trusted.

The GX context and each suite are built once per process and reused for every batch; each batch gets a
data source of its own, deleted after it (GX's execution engine keeps every frame a source has seen).
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

import pandas as pd

from data_contracts.suites import (
    REFERENCE_COLUMNS,
    TABLES,
    events_expectations,
    items_expectations,
    users_expectations,
)
from recsys.ingest.schema import QUARANTINE_SCHEMA, empty_frame

if TYPE_CHECKING:
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.core.expectation_validation_result import ExpectationValidationResult
    from great_expectations.data_context.data_context.abstract_data_context import AbstractDataContext


class ContractError(ValueError):
    """A table the contracts cannot judge (unknown table name, inconsistent validation output)."""


@dataclass(frozen=True)
class ContractResult:
    """Clean rows, quarantined rows (``table``, ``reason``, ``record``) and failures per expectation."""

    table: str
    clean: pd.DataFrame
    quarantine: pd.DataFrame
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def rows_in(self) -> int:
        return len(self.clean) + len(self.quarantine)


@lru_cache(maxsize=1)
def _context() -> AbstractDataContext:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


@cache
def _suite(name: str, references: tuple[str, ...]) -> ExpectationSuite:
    import great_expectations as gx

    if name == "interaction_events":
        expectations = events_expectations(references)
    elif name == "items":
        expectations = items_expectations()
    else:
        expectations = users_expectations()
    return gx.ExpectationSuite(name=f"{name}-{uuid.uuid4().hex}", expectations=expectations)


def describe(config: Any) -> str:
    """``expectation_type(columns[ where condition])``: names the rule and the columns it judged."""
    kwargs = config.kwargs
    columns = [str(kwargs[k]) for k in ("column", "column_A", "column_B") if kwargs.get(k) is not None]
    condition = kwargs.get("row_condition")
    if isinstance(condition, dict):  # GX stores a pandas query as {"pass_through_filter": query, ...}
        condition = condition.get("pass_through_filter", condition)
    where = f" where {condition}" if condition else ""
    return f"{config.type}({', '.join(columns)}{where})"


def _exception(result: ExpectationValidationResult) -> str | None:
    info = result.exception_info or {}
    candidates = [info] + [v for v in info.values() if isinstance(v, dict)]
    for entry in candidates:
        if entry.get("raised_exception"):
            return str(entry.get("exception_message") or "raised an exception").splitlines()[0]
    return None


def _records(rows: pd.DataFrame) -> list[str]:
    """Each row as a JSON object (ISO timestamps, nulls as null), keeping the quarantine readable."""
    parsed = json.loads(rows.to_json(orient="records", date_format="iso", date_unit="us"))
    return [json.dumps(row, sort_keys=True) for row in parsed]


def _run_suite(name: str, df: pd.DataFrame, references: tuple[str, ...]) -> list[ExpectationValidationResult]:
    context = _context()
    # A data source per batch, deleted after it: GX's execution engine keeps every batch's frame it has
    # seen, so a long-lived source would hold the whole log by the end of a chunked ingest.
    source = context.data_sources.add_pandas(f"{name}-{uuid.uuid4().hex}")
    try:
        batch_definition = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        batch = batch_definition.get_batch(batch_parameters={"dataframe": df})
        outcome = batch.validate(_suite(name, references), result_format={"result_format": "COMPLETE"})
    finally:
        context.data_sources.delete(source.name)
    return list(outcome.results)


def _is_known(values: pd.Series, known: Collection[str]) -> pd.Series:
    """Whether each value is one of ``known``, null where the value is null (that is the not-null rule's
    business): a hash lookup; pass a ``pd.Index`` to build it once for many batches."""
    index = known if isinstance(known, pd.Index) else pd.Index(list(known))
    found = pd.Series(index.get_indexer(values.astype(object)) >= 0, index=values.index, dtype="boolean")
    return found.mask(values.isna().to_numpy())


def validate_table(
    name: str,
    df: pd.DataFrame,
    *,
    known_user_ids: Collection[str] | None = None,
    known_item_ids: Collection[str] | None = None,
) -> ContractResult:
    """Validate ``df`` against the suite of table ``name`` and split it; no row is dropped silently.

    Args:
        name: one of ``interaction_events``, ``items``, ``users``.
        df: the table in the pandas form of ``recsys.ingest.schema``.
        known_user_ids: for events, the user ids that exist; events of other users are quarantined
            (a ``pd.Index`` is looked up as it is; reuse one across batches).
        known_item_ids: for events, the item ids that exist.

    Returns:
        clean rows (index reset) and one quarantine row per rejected row, with every failed rule named.
    """
    if name not in TABLES:
        raise ContractError(f"no data contract for table {name!r}; known: {', '.join(TABLES)}")
    work = df.reset_index(drop=True)
    if work.empty:
        return ContractResult(name, work, empty_frame(QUARANTINE_SCHEMA))
    known = {"user_id": known_user_ids, "item_id": known_item_ids} if name == "interaction_events" else {}
    references = tuple(column for column, ids in known.items() if ids is not None)
    lookups = {
        REFERENCE_COLUMNS[column]: _is_known(work[column], ids) if column in work else pd.NA
        for column, ids in known.items()
        if ids is not None
    }
    reasons: dict[int, list[str]] = defaultdict(list)
    failures: dict[str, int] = {}
    for result in _run_suite(name, work.assign(**lookups), references):
        reason = describe(result.expectation_config)
        error = _exception(result)
        if error is None and result.success:
            continue
        index = None if error else result.result.get("unexpected_index_list")
        if index is None:  # table-level expectation, or the rule could not run: no row can be trusted
            rows = list(range(len(work)))
            reason = f"{reason}: {error}" if error else reason
        else:
            rows = [int(i) for i in index]
            expected = result.result.get("unexpected_count")
            if expected is not None and int(expected) != len(rows):
                raise ContractError(f"{reason}: {expected} unexpected values but {len(rows)} row indexes")
        failures[reason] = len(rows)
        for row in rows:
            reasons[row].append(reason)
    bad = sorted(reasons)
    quarantine = pd.DataFrame(
        {
            "table": [name] * len(bad),
            "reason": ["; ".join(reasons[i]) for i in bad],
            "record": _records(work.iloc[bad]) if bad else [],
        },
        columns=QUARANTINE_SCHEMA.names,
    ).astype(object)
    clean = work.drop(index=bad).reset_index(drop=True)
    return ContractResult(name, clean, quarantine, failures)
