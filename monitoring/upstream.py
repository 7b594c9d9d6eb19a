"""Broken-upstream checks: the data is not drifting, a producer broke it.

Two faults look like drift to a PSI but must stop retraining instead: a column that an upstream job
stopped filling (every value missing where the reference had values) and a category vocabulary change
(values the models' fixed vocabularies do not know, e.g. a renamed genre, which would silently turn into
all-zero genre vectors). These are plain functions on frames; :mod:`monitoring.monitor` turns them into
``fill_rate`` and ``unseen_category_share`` observations, and the loop refuses to train when they page.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class VocabularyChange:
    """Categories of ``subject`` in the current sample outside the known vocabulary.

    ``unseen_share`` is the share of current values (for list columns: of rows holding at least one such
    value) that the vocabulary does not know; ``unseen`` lists them, most frequent first.
    """

    subject: str
    unseen_share: float
    unseen: tuple[str, ...]
    n_current: int


def _flatten(values: Iterable[object]) -> list[list[str]]:
    rows: list[list[str]] = []
    for value in values:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            rows.append([])
        elif isinstance(value, str):
            rows.append([value])
        else:
            rows.append([str(v) for v in value])  # type: ignore[attr-defined]
    return rows


def vocabulary_change(subject: str, current: Sequence[object], known: Collection[str]) -> VocabularyChange:
    """How much of ``current`` falls outside ``known``; missing values are not judged here.

    >>> change = vocabulary_change("genre", [["Drama"], ["SciFi", "Drama"], None], {"Drama", "Sci-Fi"})
    >>> change.unseen_share, change.unseen
    (0.5, ('SciFi',))
    """
    rows = [row for row in _flatten(current) if row]
    known_set = set(known)
    unseen_rows = [row for row in rows if any(value not in known_set for value in row)]
    counts = pd.Series([v for row in unseen_rows for v in row if v not in known_set], dtype=object)
    ordered = tuple(str(v) for v in counts.value_counts().index) if len(counts) else ()
    share = len(unseen_rows) / len(rows) if rows else 0.0
    return VocabularyChange(subject, share, ordered, len(rows))


def reference_vocabulary(reference: Sequence[object]) -> set[str]:
    """Every category the reference sample showed (list columns flattened)."""
    return {value for row in _flatten(reference) for value in row}


def emptied_columns(reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """Columns with values in the reference and none at all in a non-empty current sample.

    >>> ref = pd.DataFrame({"a": [1.0, 2.0], "b": [None, None]})
    >>> emptied_columns(ref, pd.DataFrame({"a": [None, None], "b": [None, None]}), ["a", "b"])
    ['a']
    """
    if current.empty:
        return []
    return [c for c in columns if reference[c].notna().any() and current[c].isna().all()]
