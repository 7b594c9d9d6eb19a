"""Self-contained HTML reports of simulated experiments: tables plus plots embedded as base64 PNG.

Each `*_figure` function draws one plot and returns it as PNG bytes; `render` lays out titled sections of
key/value tables and figures in one HTML file that opens offline.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from evaluation.experiments.ab_tests import TestResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Section:
    """A heading, rows of (label, value) and PNG figures."""

    title: str
    rows: Sequence[tuple[str, str]] = ()
    figures: Sequence[bytes] = field(default_factory=tuple)
    note: str = ""


def _pyplot() -> ModuleType:
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory only
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def _axes(title: str, width: float = 6.0) -> tuple[Figure, Axes]:
    fig, ax = _pyplot().subplots(figsize=(width, 3.4))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def arms_figure(results: Mapping[str, TestResult], metrics: Sequence[str]) -> bytes:
    """Each metric's value per arm with the interval of the treatment-control difference around treatment."""
    shown = [m for m in metrics if m in results]
    fig, axes = _pyplot().subplots(1, len(shown), figsize=(3.2 * len(shown), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], shown, strict=True):
        r = results[metric]
        ax.bar([0, 1], [r.control_value, r.treatment_value], color=["#9aa5b1", "#2f6fb0"], width=0.6)
        low, high = r.control_value + r.ci_low, r.control_value + r.ci_high
        spread = [[r.treatment_value - low], [high - r.treatment_value]]
        ax.errorbar([1], [r.treatment_value], yerr=spread, color="black", capsize=6)
        ax.set_xticks([0, 1], ["control", "treatment"])
        ax.set_title(f"{metric}\np={r.p_value:.2g}", fontsize=9)
    return _png(fig)


def cumulative_figure(hours: np.ndarray, lift: np.ndarray, low: np.ndarray, high: np.ndarray) -> bytes:
    """Relative lift of the primary metric as users accumulate, with its interval."""
    fig, ax = _axes("Cumulative relative lift (slate CTR)")
    ax.fill_between(hours / 24, low * 100, high * 100, alpha=0.25, color="#2f6fb0")
    ax.plot(hours / 24, lift * 100, color="#2f6fb0", marker="o")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("days since start")
    ax.set_ylabel("lift %")
    return _png(fig)


def p_value_figure(p_values: np.ndarray, alpha: float) -> bytes:
    """Histogram of A/A p-values: flat when the test is calibrated; the first bar is the false positives."""
    fig, ax = _axes("A/A p-values (uniform when calibrated)")
    ax.hist(p_values, bins=[i / 20 for i in range(21)], color="#9aa5b1", edgecolor="white")
    ax.axvline(alpha, color="#c0392b", linestyle="--", label=f"alpha={alpha}")
    ax.axhline(len(p_values) / 20, color="black", linewidth=0.8, label="expected")
    ax.legend()
    return _png(fig)


def power_curve_figure(
    sizes: Sequence[int], rates: Sequence[tuple[float, float, float]], label: str
) -> bytes:
    """Detection rate (with interval) against users."""
    fig, ax = _axes(f"Detection rate: {label}")
    values = np.array(rates)
    spread = [values[:, 0] - values[:, 1], values[:, 2] - values[:, 0]]
    ax.errorbar(sizes, values[:, 0], yerr=spread, marker="o", capsize=4)
    ax.axhline(0.8, color="#c0392b", linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("users")
    ax.set_ylim(0, 1.05)
    return _png(fig)


def estimates_figure(named: Mapping[str, tuple[float, float, float]]) -> bytes:
    """Point estimates with intervals, one row each (off-policy estimates beside the online value)."""
    fig, ax = _axes("Estimated vs online value")
    for n, (value, low, high) in enumerate(named.values()):
        ax.errorbar([value], [n], xerr=[[value - low], [high - value]], marker="o", capsize=5)
    ax.set_yticks(range(len(named)), list(named))
    ax.set_xlabel("click rate of the featured slot")
    return _png(fig)


def traffic_figure(hours: np.ndarray, traffic: np.ndarray, events: Sequence[tuple[float, str]]) -> bytes:
    """The canary's traffic share over simulated time, with its transitions marked."""
    fig, ax = _axes("Canary traffic share", width=7.0)
    ax.step(np.r_[0.0, hours] / 24, np.r_[traffic[:1], traffic] * 100, where="post", color="#2f6fb0")
    for hour, label in events:
        ax.axvline(hour / 24, color="#c0392b" if "rollback" in label else "#7f8c8d", linestyle=":")
    ax.set_xlabel("simulated days")
    ax.set_ylabel("% of users on canary")
    return _png(fig)


def result_rows(results: Mapping[str, TestResult]) -> list[tuple[str, str]]:
    """One readable line per test."""
    rows = []
    for name, r in results.items():
        lift = ""
        if r.relative_lift is not None:
            lift = f", lift {r.relative_lift:+.2%}"
            if r.relative_ci_low is not None and r.relative_ci_high is not None:
                lift += f" [{r.relative_ci_low:+.2%}, {r.relative_ci_high:+.2%}]"
        rows.append(
            (
                name,
                f"{r.test}: control {r.control_value:.4g}, treatment {r.treatment_value:.4g}, "
                f"diff {r.estimate:+.4g} [{r.ci_low:+.4g}, {r.ci_high:+.4g}]{lift}, p={r.p_value:.3g}",
            )
        )
    return rows


def render(title: str, sections: Sequence[Section]) -> str:
    """The whole report as one HTML string (no external files, scripts or styles)."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.note:
            body.append(f"<p>{html.escape(section.note)}</p>")
        if section.rows:
            cells = "".join(
                f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in section.rows
            )
            body.append(f"<table>{cells}</table>")
        for png in section.figures:
            data = base64.b64encode(png).decode("ascii")
            body.append(f'<img alt="{html.escape(section.title)}" src="data:image/png;base64,{data}">')
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:0.5em 0}th,td{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;font-size:0.9em}img{display:block;margin:0.8em 0;max-width:100%}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )
