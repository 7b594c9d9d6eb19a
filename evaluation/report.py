"""The self-contained HTML evaluation report: tables and plots embedded as base64 PNG, no outside files.

Figures: metric vs K per model, the ranker's reliability diagram, NDCG per slice, and the popularity of
recommended items. The page reads only the metrics document (`metrics.json`'s content) and the figures,
so it can be rebuilt from a saved document.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CURVE_METRICS: tuple[str, ...] = ("recall", "ndcg", "precision", "map")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    _pyplot().close(fig)
    return buffer.getvalue()


def metric_vs_k_figure(curves: Mapping[str, Mapping[str, float]], ks: Sequence[int]) -> bytes:
    """One panel per metric of CURVE_METRICS, one line per model over K."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4 * len(CURVE_METRICS), 3.4))
    for ax, metric in zip(axes, CURVE_METRICS, strict=True):
        for name, values in curves.items():
            ax.plot(ks, [values.get(f"{metric}@{k}", np.nan) for k in ks], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xticks(list(ks), [str(k) for k in ks])
        ax.set_xlabel("K")
        ax.set_title(f"{metric} @ K")
    axes[0].legend(fontsize=7)
    return _png(fig)


def reliability_figure(
    curve: Mapping[str, Sequence[float]], raw: Mapping[str, Sequence[float]] | None = None
) -> bytes:
    """Observed positive rate against mean predicted probability per bin, over a count histogram.

    Args:
        curve: the calibrated probabilities' reliability curve (edges, mean_prediction, frequency, count).
        raw: the same for the raw score through a logistic, drawn as a second line; None draws
            `curve` alone, labelled as the raw reading (a ranker trained before calibration).
    """
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    lines = (
        [("calibrated ranker", curve), ("raw score (logistic)", raw)]
        if raw
        else [("raw score (logistic)", curve)]
    )
    for label, values in lines:
        mean = np.asarray(values["mean_prediction"], dtype=float)
        freq = np.asarray(values["frequency"], dtype=float)
        filled = np.asarray(values["count"], dtype=float) > 0
        top.plot(mean[filled], freq[filled], marker="o", label=label)
    top.set_ylabel("observed positive rate")
    top.set_title("Ranker reliability")
    top.legend(loc="upper left", fontsize=8)
    edges = np.asarray(curve["edges"], dtype=float)
    count = np.asarray(curve["count"], dtype=float)
    bottom.bar((edges[:-1] + edges[1:]) / 2, count, width=np.diff(edges), edgecolor="black")
    bottom.set_xlabel("mean predicted probability")
    bottom.set_ylabel("candidates")
    return _png(fig)


def slices_figure(slices: Mapping[str, Mapping[str, Any]], metric: str) -> bytes:
    """`metric` per slice (x) and model (bars); the slice's user count under its name."""
    plt = _pyplot()
    names = [s for s, v in slices.items() if v["n_users"]]
    models = sorted({m for s in names for m in slices[s]["models"]})
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(names) + 2), 3.6))
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        values = [slices[s]["models"].get(model, {}).get(metric, np.nan) for s in names]
        ax.bar(np.arange(len(names)) + i * width, values, width, label=model)
    ax.set_xticks(
        np.arange(len(names)) + width * (len(models) - 1) / 2,
        [f"{s}\n({slices[s]['n_users']} users)" for s in names],
        fontsize=8,
    )
    ax.set_title(f"{metric} by slice")
    ax.legend(fontsize=7)
    return _png(fig)


def popularity_figure(percentiles: Mapping[str, Sequence[float]]) -> bytes:
    """Per model, the cumulative share of recommendations against the items' popularity percentile."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, values in percentiles.items():
        ordered = np.sort(np.asarray(values, dtype=float))
        if len(ordered):
            ax.plot(ordered, np.arange(1, len(ordered) + 1) / len(ordered), label=name)
    ax.plot([0, 100], [0, 1], linestyle="--", color="grey", label="uniform over the catalogue")
    ax.set_xlabel("popularity percentile of the recommended item (100 = most popular)")
    ax.set_ylabel("share of recommendations")
    ax.set_title("Popularity of recommended items")
    ax.legend(fontsize=7)
    return _png(fig)


def popularity_percentiles(counts: Mapping[str, float], catalogue: Sequence[str]) -> dict[str, float]:
    """Each catalogue item's popularity percentile in [0, 100] (ties share the mean rank).

    >>> popularity_percentiles({"a": 5, "b": 1}, ["a", "b", "c"])
    {'a': 100.0, 'b': 50.0, 'c': 0.0}
    """
    import pandas as pd

    values = pd.Series([float(counts.get(i, 0.0)) for i in catalogue], index=list(catalogue))
    ranks = values.rank(method="average")
    span = max(len(values) - 1, 1)
    return {str(item): float(100 * (rank - 1) / span) for item, rank in ranks.items()}


def _table(models: Mapping[str, Mapping[str, float]], keys: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    rows = []
    for name, values in models.items():
        cells = "".join(
            f"<td>{values[k]:.4f}</td>" if isinstance(values.get(k), float) else "<td>-</td>" for k in keys
        )
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    return f"<table><tr><th>model</th>{head}</tr>{''.join(rows)}</table>"


def render_html(document: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """The report page: a header, the metric tables, then each figure as an embedded PNG."""
    ks = document["ks"]
    ranking_keys = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "precision", "mrr", "map", "hit_rate")]
    list_keys = [f"{m}@{k}" for k in ks for m in ("coverage", "category_diversity", "novelty", "gini")]
    title = (
        f"Evaluation of {document['model_ref']} on {document['split']} "
        f"of dataset {document['dataset_version']}"
    )
    versions = ", ".join(f"{k} v{v}" for k, v in document["model_versions"].items())
    calibration = document.get("calibration") or {}
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;background:#fff}"
        "table{border-collapse:collapse;font-size:12px;margin-bottom:1.5em}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%;display:block;"
        "margin-bottom:2em}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{document['n_users']} judged users; models: {html.escape(versions)}; "
        f"ranker ECE {calibration.get('ece', float('nan')):.4f} "
        f"({'calibrated' if calibration.get('calibrated') else 'raw score, no calibration'}; raw score "
        f"{calibration.get('raw_ece', float('nan')):.4f}) over {calibration.get('n', 0)} candidates.</p>",
        "<h2>Ranking metrics</h2>",
        _table(document["models"], ranking_keys),
        "<h2>Beyond accuracy</h2>",
        _table(document["models"], list_keys),
    ]
    for name, png in figures.items():
        encoded = base64.b64encode(png).decode("ascii")
        label = html.escape(name)
        parts.append(f"<h2>{label}</h2><img alt='{label}' src='data:image/png;base64,{encoded}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
