"""Evidently reports of one monitoring run: data drift, prediction drift and target drift.

Each report is a self-contained HTML file (readable offline in a browser) plus a verdict a machine reads:
which columns drifted, by Evidently's per-column tests, and whether the share of drifted columns reaches
``drift.drift_share_threshold``. The frames come from :mod:`monitoring.monitor`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from monitoring.drift import ColumnDrift, compare, quiet_statistics
from recsys.vocab import POSITIVE_EVENT_TYPES

REPORT_KINDS: tuple[str, ...] = ("data_drift", "prediction_drift", "target_drift")


@dataclass(frozen=True)
class ReportVerdict:
    """One Evidently report: where its HTML is and what it concluded."""

    kind: str
    html: str
    drift_detected: bool
    share_drifted: float
    drifted_columns: list[str]
    columns: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def target_labels(event_types: pd.Series) -> pd.Series:
    """The label each event gives the models: positive, negative (skip) or none.

    >>> target_labels(pd.Series(["like", "skip", "view"])).tolist()
    ['positive', 'negative', 'none']
    """
    positive = event_types.isin(POSITIVE_EVENT_TYPES)
    negative = event_types == "skip"
    return pd.Series(
        ["positive" if p else "negative" if n else "none" for p, n in zip(positive, negative, strict=True)],
        index=event_types.index,
        dtype=object,
    )


def write_report(
    kind: str,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    categorical: list[str],
    numerical: list[str],
    out_dir: Path,
    drift_share: float,
) -> ReportVerdict:
    """Run Evidently's drift preset on the given columns, save ``<kind>.html``, return the verdict."""
    columns: list[ColumnDrift]
    html = out_dir / f"{kind}.html"
    with quiet_statistics():
        columns, snapshot = compare(
            reference[[*categorical, *numerical]].reset_index(drop=True),
            current[[*categorical, *numerical]].reset_index(drop=True),
            categorical,
            numerical,
            drift_share,
        )
        snapshot.save_html(str(html))
    drifted = [c.column for c in columns if c.drifted]
    share = len(drifted) / len(columns) if columns else 0.0
    return ReportVerdict(
        kind=kind,
        html=html.name,
        drift_detected=bool(columns) and share >= drift_share,
        share_drifted=share,
        drifted_columns=drifted,
        columns=[asdict(c) for c in columns],
    )


def usable(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """Columns with at least two values on both sides of the comparison (Evidently needs data to compare)."""
    return [c for c in columns if frame[c].notna().sum() >= 2]
