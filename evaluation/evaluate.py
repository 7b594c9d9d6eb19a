"""`recsys evaluate`: ranking and beyond-accuracy metrics of a registered system on a split's window.

Protocol (`evaluation.harness`): for every user with a positive in the window (the test window by
default), the user's history is everything before it; items from that history are never recommended.
Relevant items are the user's window positives. On the same users:

- popularity (like count over the history) and the CF baselines of `evaluate.baselines`;
- retrieval: the two-tower top items of the evaluated system (`--model`, default `champion`), features
  as of the user's window start; retrieval+ranking: its ranker reordering the first
  `ranker.n_candidates`;
- champion: the champion's retrieval+ranking, when the evaluated system is another one;
- served: the serving stages themselves replayed over the same users (`evaluation.replay`).

Outputs, next to each other in `<state>/evaluation/<dataset_version>/[global/][<split>-<model>/]`
(`global/` for a `split.method: global` split, as `evaluation.split.split_dir` keeps that split apart):
metrics.json (schema `METRICS_SCHEMA_VERSION`, documented in docs/evaluation.md), report.html
(self-contained), table.txt and metrics.png. table.txt and the console also show every slice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from evaluation.beyond_accuracy import list_metrics
from evaluation.harness import rankings_by_user as rankings_by_user
from evaluation.metrics import ranking_metrics
from evaluation.split import method_folder
from recsys.config import PipelineConfig
from recsys.state import StateDir

# Columns of the second table: metric key prefix -> header.
EXTRA_COLUMNS: dict[str, str] = {
    "precision": "P",
    "mrr": "MRR",
    "map": "MAP",
    "hit_rate": "HitRate",
    "coverage": "Coverage",
    "category_diversity": "CatDiv",
    "novelty": "Novelty",
    "gini": "Gini",
}
# Columns of the slice table: metric key prefix -> header.
SLICE_METRICS: dict[str, str] = {"ndcg": "NDCG", "recall": "Recall"}
console = Console(stderr=True)


@dataclass(frozen=True)
class EvaluationSummary:
    dataset_version: str
    n_users: int
    ks: tuple[int, ...]
    models: dict[str, dict[str, float]]
    model_versions: dict[str, str]
    path: Path
    split: str = "test"
    model_ref: str = "champion"
    seconds: float = 0.0


def mean_metrics(
    rankings: Mapping[str, Sequence[str]], relevant: Mapping[str, set[str]], ks: Sequence[int]
) -> dict[str, float]:
    """Every ranking metric at every K, averaged over the users of `relevant` (a missing ranking scores 0).

    Users with an empty relevant set are left out (see `evaluation.metrics.ranking_metrics`).
    """
    return ranking_metrics(rankings, relevant, ks)


def item_categories(items: pd.DataFrame) -> dict[str, set[str]]:
    """Item id -> its set of categories (genres), from the `items` table."""
    return {
        str(item): set(map(str, cats)) if cats is not None else set()
        for item, cats in zip(items["item_id"], items["categories"], strict=True)
    }


def users_per_item(seen: Mapping[str, set[str]]) -> dict[str, int]:
    """Item id -> number of users with an event on it in their history: the popularity novelty uses."""
    counts: dict[str, int] = {}
    for items in seen.values():
        for item in items:
            counts[item] = counts.get(item, 0) + 1
    return counts


def popularity_rankings(
    popular: Sequence[str], users: Sequence[str], seen: Mapping[str, set[str]], n: int
) -> dict[str, list[str]]:
    """Per user, the n most popular items the user has not seen."""
    out: dict[str, list[str]] = {}
    for user in users:
        banned = seen.get(user, set())
        picked: list[str] = []
        for item in popular:
            if item not in banned:
                picked.append(item)
                if len(picked) == n:
                    break
        out[user] = picked
    return out


def render_table(models: Mapping[str, Mapping[str, float]], ks: Sequence[int], title: str) -> Table:
    table = Table(title=title)
    table.add_column("model")
    for k in ks:
        table.add_column(f"Recall@{k}", justify="right")
        table.add_column(f"NDCG@{k}", justify="right")
    for name, values in models.items():
        table.add_row(name, *[f"{values[f'{m}@{k}']:.4f}" for k in ks for m in ("recall", "ndcg")])
    return table


def render_extra_table(models: Mapping[str, Mapping[str, float]], ks: Sequence[int], title: str) -> Table:
    """The other ranking and the beyond-accuracy metrics, one row per model and K."""
    table = Table(title=title)
    table.add_column("model")
    table.add_column("K", justify="right")
    for header in EXTRA_COLUMNS.values():
        table.add_column(header, justify="right")
    for name, values in models.items():
        for k in ks:
            cells = [f"{values[f'{m}@{k}']:.4f}" if f"{m}@{k}" in values else "-" for m in EXTRA_COLUMNS]
            table.add_row(name, str(k), *cells)
    return table


def slice_columns(ks: Sequence[int]) -> list[str]:
    """The metric keys of the slice table: NDCG and Recall at 10 and Recall at 100, or at the smallest
    and largest configured K when 10 or 100 is not configured.

    >>> slice_columns([10, 50, 100]), slice_columns([5, 20]), slice_columns([10])
    (['ndcg@10', 'recall@10', 'recall@100'], ['ndcg@5', 'recall@5', 'recall@20'], ['ndcg@10', 'recall@10'])
    """
    small = 10 if 10 in ks else min(ks)
    large = 100 if 100 in ks else max(ks)
    return [f"ndcg@{small}", f"recall@{small}"] + ([f"recall@{large}"] if large != small else [])


def render_slices_text(document: Mapping[str, Any]) -> str:
    """The slices of a metrics document as plain text: per slice a line with its user count, then one
    row per system at the columns of `slice_columns`; an empty slice is a single line. "" without slices.

    Columns are aligned across slices so that a system can be compared from one slice to the next.
    """
    slices: Mapping[str, Mapping[str, Any]] = document.get("slices") or {}
    if not slices:
        return ""
    columns = slice_columns(document["ks"])
    headers = [f"{SLICE_METRICS[key.split('@')[0]]}@{key.split('@')[1]}" for key in columns]
    systems = [name for block in slices.values() for name in block["models"]]
    name_width = max([len("system"), *map(len, systems)])
    widths = [max(len(header), 6) for header in headers]
    lines = [f"Slices of the {document['split']} window"]
    for name, block in slices.items():
        n_users = block["n_users"]
        if not n_users:
            lines.append(f"{name}: 0 users, no metrics")
            continue
        lines.append(f"{name}: {n_users} user{'' if n_users == 1 else 's'}")
        cells = [h.rjust(w) for h, w in zip(headers, widths, strict=True)]
        lines.append("  " + "  ".join(["system".ljust(name_width), *cells]).rstrip())
        for system, values in block["models"].items():
            cells = [
                (f"{values[key]:.4f}" if key in values else "-").rjust(w)
                for key, w in zip(columns, widths, strict=True)
            ]
            lines.append("  " + "  ".join([system.ljust(name_width), *cells]))
    return "\n".join(lines)


def _metric_key(model: str, metric: str) -> str:
    """An MLflow-legal metric name: test_retrieval_ranking_ndcg_at_10."""
    return f"test_{model.replace('+', '_')}_{metric.replace('@', '_at_')}"


def _plot(models: Mapping[str, Mapping[str, float]], ks: Sequence[int], path: Path) -> None:
    """A bar chart per metric, one bar per model and K: the figure a reader looks at first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.8 / len(models)
    for ax, metric in zip(axes, ("recall", "ndcg"), strict=True):
        for i, (name, values) in enumerate(models.items()):
            ax.bar(np.arange(len(ks)) + i * width, [values[f"{metric}@{k}"] for k in ks], width, label=name)
        ax.set_xticks(np.arange(len(ks)) + width * (len(models) - 1) / 2, [f"@{k}" for k in ks])
        ax.set_title(f"{'Recall' if metric == 'recall' else 'NDCG'} on the test window")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def baseline_rankings(
    names: Sequence[str],
    items: pd.DataFrame,
    history: pd.DataFrame,
    users: Sequence[str],
    seen: Mapping[str, set[str]],
    n: int,
) -> dict[str, dict[str, list[str]]]:
    """Top-n lists of the named collaborative-filtering baselines, fitted on the users' history."""
    from training.baselines import default_baselines

    available = default_baselines(item_categories(items))
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {sorted(available)}")
    rankings: dict[str, dict[str, list[str]]] = {}
    for name in names:
        lists = (
            available[name].fit(history).recommend(list(users), n, {u: set(seen.get(u, ())) for u in users})
        )
        rankings[name] = dict(zip(users, lists, strict=True))
    return rankings


def evaluation_dir(state: StateDir, version: str, method: str = "per_user") -> Path:
    """The evaluations of ``version`` on a ``method`` split: ``evaluation/<version>/`` (per user) or
    ``.../global/``, mirroring `evaluation.split.split_dir`, so the two splits' figures never overwrite
    each other. ``global`` cannot clash with a ``<split>-<ref>`` folder: those always hold a hyphen."""
    return method_folder(state.evaluation(version), method)


def output_dir(state: StateDir, version: str, split: str, model_ref: str, method: str = "per_user") -> Path:
    """Where an evaluation writes: the `evaluation_dir` of the split method for the champion on test (the
    default run), a `<split>-<ref>` folder below it otherwise, so runs on other models never overwrite it."""
    from training.registry import CHAMPION

    base = evaluation_dir(state, version, method)
    return base if (split, model_ref) == ("test", CHAMPION) else base / f"{split}-{model_ref}"


def _labels(ranked: pd.DataFrame, relevant: Mapping[str, set[str]]) -> np.ndarray:
    return np.fromiter(
        (i in relevant.get(u, ()) for u, i in zip(ranked["user_id"], ranked["item_id"], strict=True)),
        dtype=float,
        count=len(ranked),
    )


def run_evaluate(
    config: PipelineConfig,
    dataset_version: str | None = None,
    model: str = "champion",
    split: str = "test",
) -> EvaluationSummary:
    """Evaluate the system `model` (alias or ranker version) beside the baselines on `split`'s window;
    write metrics.json, report.html, a table and a figure. See the module docstring."""
    import time

    from evaluation.compare import compare_rows, render_comparisons
    from evaluation.document import build_document, calibration_summary, curve_ks
    from evaluation.harness import load_window, score_system
    from evaluation.replay import run_replay
    from evaluation.slices import context_slices, item_slices, restrict_relevant, slice_metrics, user_slices
    from training import examples as ex
    from training.registry import CHAMPION, RANKER_MODEL, TWO_TOWER_MODEL, model_version, resolve_system

    started = time.perf_counter()
    ks = tuple(sorted(config.evaluate.ks))
    n_candidates = max(config.ranker.n_candidates, max(ks))
    with console.status("loading split, models and feature store") as status:
        window = load_window(config, dataset_version, split)
        version, users, relevant, seen = window.dataset_version, window.users, window.relevant, window.seen
        system = score_system(config, window, model, n_candidates, progress=status.update)
        rankings: dict[str, dict[str, list[str]]] = {}
        popular = [item for item, _ in ex.popularity(window.history)]
        rankings["popularity"] = popularity_rankings(popular, users, seen, max(ks))
        rankings |= baseline_rankings(
            config.evaluate.baselines, window.items, window.history, users, seen, max(ks)
        )
        rankings |= system.rankings
        if resolve_system(window.state, CHAMPION) != (system.two_tower_version, system.ranker_version):
            status.update("champion: the current champion on the same users")
            champion = score_system(config, window, CHAMPION, n_candidates, progress=status.update)
            rankings["champion"] = champion.rankings["retrieval+ranking"]
        replay = None
        if config.evaluate.replay:
            status.update("served: replaying the serving stages over the judged users")
            replayed = run_replay(config, window, model, max(ks))
            rankings["served"] = replayed.rankings
            replay = {"fallbacks": replayed.fallbacks}

    categories = item_categories(window.items)
    catalogue = sorted(categories)
    item_users = users_per_item(seen)
    grid = curve_ks(ks)
    models: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, float]] = {}
    for name, lists_by_user in rankings.items():
        curves[name] = mean_metrics(lists_by_user, relevant, grid)
        models[name] = {k: v for k, v in curves[name].items() if int(k.split("@")[1]) in ks}
        lists = [lists_by_user.get(u, []) for u in users]
        models[name] |= list_metrics(lists, ks, catalogue, categories, item_users, len(seen))

    history_counts = window.history["user_id"].astype(str).value_counts().to_dict()
    item_counts = {str(k): float(v) for k, v in window.history["item_id"].astype(str).value_counts().items()}
    head = item_slices(item_counts, config.evaluate.head_share)["head"]
    users_by_slice = user_slices(
        history_counts, users, config.evaluate.cold_start_max, config.evaluate.power_quantile
    ) | context_slices(window.window, users)
    slices = slice_metrics(
        rankings,
        relevant,
        users_by_slice,
        {
            "long_tail_items": restrict_relevant(relevant, drop=head),
            "new_items": restrict_relevant(relevant, drop=set(item_counts)),
        },
        ks,
    )
    # Is the two-stage system's lead over each row real? Paired over the same users (evaluation/compare.py).
    comparisons = compare_rows(rankings, relevant, "retrieval+ranking", [f"ndcg@{ks[0]}", f"recall@{ks[-1]}"])
    calibration = calibration_summary(
        _labels(system.ranked, relevant),
        system.ranked["rank_score"].to_numpy(),
        system.ranked["rank_probability"].to_numpy(),
    )
    versions = {"retrieval": system.two_tower_version, "ranking": system.ranker_version}
    method = config.split.method
    title = f"{split} window, {len(users)} users, dataset {version}, model {model}"
    if method != "per_user":
        title += f", {method} split"
    table = render_table(models, ks, title)
    extra = render_extra_table(models, ks, f"{title}: more ranking metrics and beyond accuracy")
    console.print(table)
    console.print(extra)

    out_dir = output_dir(window.state, version, split, model, method)
    out_dir.mkdir(parents=True, exist_ok=True)
    document = build_document(
        dataset_version=version,
        split=split,
        model_ref=model,
        model_versions=versions,
        n_users=len(users),
        ks=ks,
        n_candidates=config.ranker.n_candidates,
        seconds=time.perf_counter() - started,
        models=models,
        curves=curves,
        slices=slices,
        calibration=calibration,
        replay=replay,
        report="report.html",
        comparisons=[c.as_dict() for c in comparisons],
    )
    (out_dir / "metrics.json").write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    slices_text = render_slices_text(document)
    compared = "paired differences, bootstrap 95% interval:\n" + render_comparisons(comparisons)
    console.print(compared, markup=False, highlight=False, soft_wrap=True)
    if slices_text:
        # Plain text, not markup: slice names such as `device=[tv]` must print as they are.
        console.print(slices_text, markup=False, highlight=False, soft_wrap=True)
    with (out_dir / "table.txt").open("w") as handle:
        table_console = Console(file=handle, width=160)
        table_console.print(table)
        table_console.print(extra)
        table_console.print(compared, markup=False, highlight=False, soft_wrap=True)
        if slices_text:
            table_console.print(slices_text, markup=False, highlight=False, soft_wrap=True)
    _plot(models, ks, out_dir / "metrics.png")
    write_report(document, rankings, item_counts, catalogue, out_dir / "report.html")

    from training.registry import log_metrics_to_run

    if split == "test":
        for model_name, model_ref, keys in (
            (TWO_TOWER_MODEL, system.two_tower_version, ("popularity", "retrieval")),
            (RANKER_MODEL, system.ranker_version, ("retrieval+ranking",)),
        ):
            entry = model_version(window.state, model_name, model_ref)
            if "run_id" in entry.tags:
                flat = {_metric_key(name, m): v for name in keys for m, v in models[name].items()}
                log_metrics_to_run(window.state, entry.tags["run_id"], flat)
    return EvaluationSummary(
        dataset_version=version,
        n_users=len(users),
        ks=ks,
        models=models,
        model_versions=versions,
        path=out_dir / "metrics.json",
        split=split,
        model_ref=model,
        seconds=document["seconds"],
    )


def write_report(
    document: Mapping[str, Any],
    rankings: Mapping[str, Mapping[str, Sequence[str]]],
    item_counts: Mapping[str, float],
    catalogue: Sequence[str],
    path: Path,
) -> Path:
    """The HTML report for `document`, with the popularity of each model's top-K items (first K)."""
    from evaluation.report import (
        metric_vs_k_figure,
        popularity_figure,
        popularity_percentiles,
        reliability_figure,
        render_html,
        slices_figure,
    )

    k = document["ks"][0]
    percentile = popularity_percentiles(item_counts, catalogue)
    shown = {
        name: [percentile.get(i, 0.0) for items in lists.values() for i in items[:k]]
        for name, lists in rankings.items()
    }
    figures = {"Metric vs K": metric_vs_k_figure(document["curves"], document["curve_ks"])}
    curve, raw_curve = document["calibration"].get("curve"), document["calibration"].get("raw_curve")
    if curve is not None:
        figures["Calibration of the ranker"] = reliability_figure(
            {key: [np.nan if v is None else v for v in values] for key, values in curve.items()},
            None
            if raw_curve is None or not document["calibration"].get("calibrated")
            else {key: [np.nan if v is None else v for v in values] for key, values in raw_curve.items()},
        )
    figures[f"Slices: NDCG@{k}"] = slices_figure(document["slices"], f"ndcg@{k}")
    figures[f"Popularity of recommended items (top {k})"] = popularity_figure(shown)
    path.write_text(render_html(document, figures))
    return path
