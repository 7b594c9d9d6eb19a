"""`recsys evaluate`: ranking and beyond-accuracy metrics on the temporal test split, against popularity.

Protocol: for every user with a positive in the test window, the user's history is their train and
validation events; items from that history are never recommended. Relevant items are the user's test
positives. Three recommenders are compared on the same users:

- popularity: items by like count over train + validation;
- retrieval: the champion two-tower's top items, user and item features as of the user's test start;
- retrieval+ranking: the champion ranker reordering the retriever's top `ranker.n_candidates`.

Features come from Feast point-in-time reads at the start of each user's test window (moved back to
the newest feature snapshot), so nothing from the test window reaches a model.

Per model and K, metrics.json holds Recall, NDCG, Precision, MRR, MAP and hit rate (averaged over the
test users), and catalogue coverage, category diversity, novelty and exposure Gini of the same users'
lists cut at K. Definitions: docs/evaluation.md.
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
from evaluation.metrics import ranking_metrics
from recsys.config import PipelineConfig
from recsys.state import MissingStateError, StateDir

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
console = Console(stderr=True)


@dataclass(frozen=True)
class EvaluationSummary:
    dataset_version: str
    n_users: int
    ks: tuple[int, ...]
    models: dict[str, dict[str, float]]
    model_versions: dict[str, str]
    path: Path


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


def rankings_by_user(candidates: pd.DataFrame, score_column: str) -> dict[str, list[str]]:
    """Per user, candidate items sorted by `score_column`, best first (ties keep candidate order)."""
    out: dict[str, list[str]] = {}
    for user, rows in candidates.groupby("user_id", sort=False):
        order = np.argsort(-rows[score_column].to_numpy(), kind="stable")
        out[str(user)] = rows["item_id"].to_numpy()[order].tolist()
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


def require_trained_on(state: StateDir, version: str) -> None:
    """Refuse to score champions on a dataset version they were not trained on: the split would not
    match the one their training saw, so the figures would mix training and test data."""
    from training.registry import RANKER_MODEL, TWO_TOWER_MODEL, champion_version

    for model_name in (TWO_TOWER_MODEL, RANKER_MODEL):
        entry = champion_version(state, model_name)
        if entry is None:
            raise MissingStateError(f"no champion {model_name}: run `recsys train` first")
        trained_on = entry.tags.get("dataset_version")
        if trained_on != version:
            raise ValueError(
                f"champion {model_name} v{entry.version} was trained on dataset {trained_on}, not {version}: "
                f"train on {version} first, or evaluate with --dataset-version {trained_on}"
            )


def run_evaluate(config: PipelineConfig, dataset_version: str | None = None) -> EvaluationSummary:
    """Evaluate popularity, the CF baselines, retrieval and retrieval + ranking on the test split;
    write metrics.json, a table and a figure."""
    from evaluation.split import load_split
    from recsys.features.store import build_store, historical_features
    from recsys.ingest.snapshot import load_dataset
    from training import examples as ex
    from training.candidates import floor_to_snapshots, generate_candidates, ranker_inputs, sorted_by_user
    from training.registry import RANKER_MODEL, TWO_TOWER_MODEL, champion_version, load_champion
    from training.runtime import RankingModel, RetrievalModel
    from training.stage import snapshot_grid

    state = StateDir(config.state_dir)
    version = state.resolve_version(dataset_version)
    ks = tuple(sorted(config.evaluate.ks))
    n_candidates = max(config.ranker.n_candidates, max(ks))
    with console.status("loading split, models and feature store") as status:
        split = load_split(state, version)
        dataset = load_dataset(state, version)
        history = pd.concat([split.train, split.validation], ignore_index=True)
        relevant = ex.items_by_user(ex.positives(split.test))
        users = sorted(relevant)
        if not users:
            raise ValueError(
                f"dataset {version} has no test users with a positive event: nothing to evaluate"
            )
        require_trained_on(state, version)
        seen = ex.items_by_user(history)
        retrieval = RetrievalModel.load(*load_champion(state, TWO_TOWER_MODEL))
        ranking = RankingModel.load(*load_champion(state, RANKER_MODEL))
        store = build_store(state, config.features)

        rankings: dict[str, dict[str, list[str]]] = {}
        popular = [item for item, _ in ex.popularity(history)]
        rankings["popularity"] = popularity_rankings(popular, users, seen, max(ks))
        rankings |= baseline_rankings(config.evaluate.baselines, dataset.items, history, users, seen, max(ks))

        status.update("retrieval: candidates at each user's test start")
        starts = ex.window_starts(split.test[split.test["user_id"].astype(str).isin(users)])
        grid = snapshot_grid(dataset.events, config.features.snapshot_every_days)
        starts["event_timestamp"] = floor_to_snapshots(starts["event_timestamp"], grid)
        candidates = generate_candidates(
            retrieval,
            store,
            historical_features,
            starts,
            seen,
            n_candidates,
            progress=lambda message: status.update(f"retrieval: {message}"),
        )
        candidates = sorted_by_user(candidates)
        rankings["retrieval"] = rankings_by_user(candidates, "retrieval_score")

        status.update(f"ranking: ranker_v1 features for {len(candidates)} candidates")
        ranked = (
            candidates.groupby("user_id", sort=False).head(config.ranker.n_candidates).reset_index(drop=True)
        )
        matrix, _, _ = ranker_inputs(store, historical_features, ranked)
        ranked = ranked.assign(rank_score=ranking.predict_matrix(matrix))
        rankings["retrieval+ranking"] = rankings_by_user(ranked, "rank_score")

    categories = item_categories(dataset.items)
    catalogue = sorted(categories)
    item_users = users_per_item(seen)
    models: dict[str, dict[str, float]] = {}
    for name in rankings:
        models[name] = mean_metrics(rankings[name], relevant, ks)
        lists = [rankings[name].get(u, []) for u in users]
        models[name] |= list_metrics(lists, ks, catalogue, categories, item_users, len(seen))
    versions = {"retrieval": retrieval.version, "ranking": ranking.version}
    title = f"Test window, {len(users)} users, dataset {version}"
    table = render_table(models, ks, title)
    extra = render_extra_table(models, ks, f"{title}: more ranking metrics and beyond accuracy")
    console.print(table)
    console.print(extra)

    out_dir = state.evaluation(version)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "dataset_version": version,
        "n_users": len(users),
        "ks": list(ks),
        "n_candidates": config.ranker.n_candidates,
        "model_versions": versions,
        "models": models,
    }
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    with (out_dir / "table.txt").open("w") as handle:
        table_console = Console(file=handle, width=160)
        table_console.print(table)
        table_console.print(extra)
    _plot(models, ks, out_dir / "metrics.png")

    from training.registry import log_metrics_to_run

    for model_name, keys in (
        (TWO_TOWER_MODEL, ("popularity", "retrieval")),
        (RANKER_MODEL, ("retrieval+ranking",)),
    ):
        entry = champion_version(state, model_name)
        if entry is not None and "run_id" in entry.tags:
            flat = {_metric_key(name, m): v for name in keys for m, v in models[name].items()}
            log_metrics_to_run(state, entry.tags["run_id"], flat)
    return EvaluationSummary(
        dataset_version=version,
        n_users=len(users),
        ks=ks,
        models=models,
        model_versions=versions,
        path=out_dir / "metrics.json",
    )
