"""Run a table through its Great Expectations suite and split it into clean rows and quarantine.

The rows that go to quarantine are exactly those listed in the suite's results (``unexpected_index_list``),
so the suite is the single definition of what a valid row is. A failed table-level expectation (a missing
column, a wrongly typed column) quarantines every row: no row of such a table can be trusted.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import pandas as pd

from data_contracts.suites import TABLES, events_expectations, items_expectations, users_expectations
from recsys.ingest.schema import QUARANTINE_SCHEMA, empty_frame

if TYPE_CHECKING:
    from great_expectations.core.expectation_validation_result import ExpectationValidationResult
    from great_expectations.data_context.data_context.abstract_data_context import AbstractDataContext
    from great_expectations.expectations.expectation import Expectation


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


def _expectations(
    name: str, known_user_ids: Collection[str] | None, known_item_ids: Collection[str] | None
) -> list[Expectation]:
    if name == "interaction_events":
        return events_expectations(known_user_ids, known_item_ids)
    if name == "items":
        return items_expectations()
    return users_expectations()


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


def _run_suite(
    name: str, df: pd.DataFrame, expectations: list[Expectation]
) -> list[ExpectationValidationResult]:
    import great_expectations as gx

    context = _context()
    source = context.data_sources.add_pandas(f"{name}-{uuid.uuid4().hex}")
    try:
        batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = gx.ExpectationSuite(name=f"{name}-{uuid.uuid4().hex}", expectations=expectations)
        batch = batch_def.get_batch(batch_parameters={"dataframe": df})
        outcome = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    finally:
        context.data_sources.delete(source.name)
    return list(outcome.results)


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
        known_user_ids: for events, the user ids that exist; events of other users are quarantined.
        known_item_ids: for events, the item ids that exist.

    Returns:
        clean rows (index reset) and one quarantine row per rejected row, with every failed rule named.
    """
    if name not in TABLES:
        raise ContractError(f"no data contract for table {name!r}; known: {', '.join(TABLES)}")
    work = df.reset_index(drop=True)
    if work.empty:
        return ContractResult(name, work, empty_frame(QUARANTINE_SCHEMA))
    reasons: dict[int, list[str]] = defaultdict(list)
    failures: dict[str, int] = {}
    for result in _run_suite(name, work, _expectations(name, known_user_ids, known_item_ids)):
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
