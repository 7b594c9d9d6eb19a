"""Data contracts: Great Expectations suites for the ingest tables, and quarantine of rejected rows."""

from data_contracts.suites import TABLES, events_expectations, items_expectations, users_expectations
from data_contracts.validation import ContractError, ContractResult, validate_table

__all__ = [
    "TABLES",
    "ContractError",
    "ContractResult",
    "events_expectations",
    "items_expectations",
    "users_expectations",
    "validate_table",
]
