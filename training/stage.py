"""`recsys train`: two-tower retrieval on Ray Train, FAISS index, LightGBM ranker, MLflow registry.

Protocol: the two-tower model learns from the positive events of the train split, each with its
point-in-time `two_tower_v1` features. The ranker learns from the validation window only: for every user
with a validation positive, the retriever's top `ranker.n_candidates` items (excluding items seen in
train) at the start of the user's validation window, with `ranker_v1` features as of that time, labelled
by the user's validation positives. The test window is never read here.

Idempotent by skipping: when both models under the target alias were trained from this dataset version
with this configuration (a fingerprint tag), the stage returns them and trains nothing.

Aliases: by default the new versions become the champions. With `alias="challenger"` they are
registered as challengers while champions exist (the gate decides whether they are promoted), and as
champions when there are none yet, so a first run always leaves something to serve.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from rich.console import Console

from recsys.config import PipelineConfig
from recsys.state import StateDir
from recsys.vocab import GENRES

if TYPE_CHECKING:
    from training.two_tower import TwoTowerModelConfig

FINGERPRINT_TAG = "train_fingerprint"
CODE_REVISION = 3  # bump when a change to training should invalidate existing champions
console = Console(stderr=True)


@dataclass(frozen=True)
class TrainSummary:
    dataset_version: str
    skipped: bool
    two_tower_version: str
    ranker_version: str
    two_tower_run_id: str
    ranker_run_id: str
    fingerprint: str
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    alias: str = "champion"
    # How the two-tower model was trained (`full` or `finetune` from the champion `finetuned_from`), and
    # why a requested fine-tune trained in full.
    retrain_mode: str = "full"
    finetuned_from: str | None = None
    finetune_refused: str = ""


def training_fingerprint(
    config: PipelineConfig, dataset_version: str, finetuned_from: str | None = None
) -> str:
    """A hash of everything that decides the trained models: data version, split, features, model settings,
    and for a two-tower model fine-tuned from a champion, that champion's version and the fine-tune
    settings."""
    payload = {
        "dataset_version": dataset_version,
        "split": config.split.model_dump(mode="json"),
        "snapshot_every_days": config.features.snapshot_every_days,
        "two_tower": _two_tower_payload(config),
        "ranker": _ranker_payload(config),
        "code_revision": CODE_REVISION,
    }
    if uses_content(config):
        payload["item_content"] = True  # absent otherwise, so older fingerprints stay valid
    if finetuned_from is not None:  # absent for a full retrain, so its fingerprints stay valid
        tt = config.two_tower
        payload["finetune"] = {
            "from": finetuned_from,
            "epochs": tt.finetune_epochs,
            "lr_factor": tt.finetune_lr_factor,
        }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _two_tower_payload(config: PipelineConfig) -> dict[str, Any]:
    """The two-tower settings that decide the model; the history and ID-dropout settings are left out
    while both are off, so fingerprints from before they existed stay valid."""
    # The fine-tune settings count only in a fine-tune (training_fingerprint's `finetune` entry).
    payload = config.two_tower.model_dump(
        mode="json", exclude={"num_workers", "use_gpu", "finetune_epochs", "finetune_lr_factor"}
    )
    if not config.two_tower.history_length and not config.two_tower.id_dropout:
        for key in ("history_length", "history_shared", "id_dropout"):
            payload.pop(key, None)
    return payload


def _ranker_payload(config: PipelineConfig) -> dict[str, Any]:
    """The ranker settings that decide the model; a LightGBM ranker's leave the multi-task section out,
    so fingerprints from before the multi-task ranker existed stay valid."""
    if config.ranker.kind == "lightgbm":
        return config.ranker.model_dump(mode="json", exclude={"num_threads", "kind", "multitask"})
    return config.ranker.model_dump(
        mode="json", exclude={"num_threads": True, "multitask": {"num_workers", "use_gpu"}}
    )


def uses_content(config: PipelineConfig) -> bool:
    """Whether the item tower reads content embeddings: both switches on (docs/features.md)."""
    return config.two_tower.content_embeddings and config.features.content_embeddings


def target_alias(state: StateDir, alias: str | None) -> str:
    """The alias new versions get: `alias`, except that the first models of a registry are champions."""
    from training.registry import CHAMPION, RANKER_MODEL, TWO_TOWER_MODEL, champion_version

    if alias is None or alias == CHAMPION:
        return CHAMPION
    if champion_version(state, TWO_TOWER_MODEL) is None or champion_version(state, RANKER_MODEL) is None:
        return CHAMPION
    return alias


def _existing(
    state: StateDir, fingerprint: str, version: str, started: float, alias: str
) -> TrainSummary | None:
    from training.registry import RANKER_MODEL, TWO_TOWER_MODEL, alias_version, configure

    tower, ranker = alias_version(state, TWO_TOWER_MODEL, alias), alias_version(state, RANKER_MODEL, alias)
    if tower is None or ranker is None:
        return None
    if tower.tags.get(FINGERPRINT_TAG) != fingerprint or ranker.tags.get(FINGERPRINT_TAG) != fingerprint:
        return None
    client = configure(state)
    logged = {
        **client.get_run(tower.tags["run_id"]).data.metrics,
        **client.get_run(ranker.tags["run_id"]).data.metrics,
    }
    metrics = {k: v for k, v in logged.items() if not k.startswith("test_")}  # test_*: added by evaluate
    return TrainSummary(
        dataset_version=version,
        skipped=True,
        two_tower_version=str(tower.version),
        ranker_version=str(ranker.version),
        two_tower_run_id=tower.tags["run_id"],
        ranker_run_id=ranker.tags["run_id"],
        fingerprint=fingerprint,
        seconds=time.perf_counter() - started,
        metrics=metrics,
        alias=alias,
        retrain_mode=tower.tags.get("retrain_mode", "full"),
        finetuned_from=tower.tags.get("finetuned_from"),
        finetune_refused=tower.tags.get("finetune_refused", ""),
    )


def two_tower_shape(
    config: PipelineConfig, n_users: int, n_items: int, content_dim: int
) -> TwoTowerModelConfig:
    """The two-tower model's sizes for these vocabularies (without the unknown row) and content width."""
    from training.two_tower import TwoTowerModelConfig

    tt = config.two_tower
    return TwoTowerModelConfig(
        n_users=n_users + 1,
        n_items=n_items + 1,
        n_genres=len(GENRES),
        embedding_dim=tt.embedding_dim,
        hidden_dim=tt.hidden_dim,
        content_dim=content_dim,
        history_length=tt.history_length,
        history_shared=tt.history_shared,
    )


def snapshot_grid(events: pd.DataFrame, every_days: int) -> list[Any]:
    """The feature job's snapshot times for this event log."""
    from recsys.features.schedule import snapshot_times

    ts = pd.to_datetime(events["event_ts"], utc=True)
    return snapshot_times(ts.min().to_pydatetime(), ts.max().to_pydatetime(), every_days)


def run_train(
    config: PipelineConfig,
    dataset_version: str | None = None,
    alias: str | None = None,
    retrain: Literal["full", "finetune"] = "full",
) -> TrainSummary:
    """Train, index, rank, log and register; see the module docstring for the protocol and `alias`.

    With ``retrain="finetune"`` the two-tower model starts from the champion's weights
    (:mod:`training.finetune`) and trains for `two_tower.finetune_epochs`; without a champion, or with one
    of another architecture, it trains in full and records why. The ranker is always trained in full.
    """
    import torch

    from evaluation.split import load_split
    from recsys.features.store import build_store, historical_features
    from recsys.ingest.snapshot import load_dataset
    from training import examples as ex
    from training.candidates import ranker_inputs, window_candidates
    from training.finetune import check_architecture, finetune_settings, initial_weights, plan_retrain
    from training.item_knn_signal import ItemKNNSignal
    from training.ranker import train_ranker
    from training.registry import RANKER_MODEL, TWO_TOWER_MODEL, log_and_register
    from training.retrieval import train_retrieval
    from training.runtime import (
        TWO_TOWER_FEATURE_SERVICE,
        RetrievalModel,
        item_dense_from_frame,
        write_ranker_artifacts,
        write_retrieval_artifacts,
    )
    from training.two_tower import TwoTowerModel
    from training.two_tower_inputs import two_tower_inputs

    started = time.perf_counter()
    state = StateDir(config.state_dir)
    version = state.resolve_version(dataset_version)
    alias = target_alias(state, alias)
    # The content width is read with the features below: this first check leaves it out, the second
    # (once the model's shape is known) compares it too.
    plan = plan_retrain(state, retrain, two_tower_shape(config, 0, 0, 0), ignore_content=True)
    fingerprint = training_fingerprint(config, version, plan.finetuned_from)
    found = _existing(state, fingerprint, version, started, alias)
    if found is not None:
        console.print(f"{alias}s already trained from {version} with this config ({fingerprint}): skipping")
        return found

    with console.status("loading split, dataset and feature store") as status:
        split = load_split(state, version, config.split)
        dataset = load_dataset(state, version)
        store = build_store(state, config.features)
        grid = snapshot_grid(dataset.events, config.features.snapshot_every_days)

        status.update("two-tower examples: point-in-time features of train and validation positives")
        inputs = two_tower_inputs(config, store, dataset, split.train, split.validation)
        train_examples, val_examples = inputs.train, inputs.validation
        users, items, content = inputs.users, inputs.items, inputs.content
        catalog = sorted(dataset.items["item_id"].astype(str))
        latest = pd.to_datetime(dataset.events["event_ts"], utc=True).max() + timedelta(days=1)
        tt = config.two_tower
        model_config = two_tower_shape(config, inputs.n_users, inputs.n_items, inputs.content_dim)
        plan = check_architecture(plan, model_config)
        if plan.refused:
            console.print(f"two-tower: fine-tune refused, training in full: {plan.refused}")
        fingerprint = training_fingerprint(config, version, plan.finetuned_from)
        warm = initial_weights(plan, model_config, users, items, tt.seed)
        train_cfg = tt if warm is None else finetune_settings(tt)

        how = "from scratch" if warm is None else f"fine-tuning champion v{plan.finetuned_from}"
        status.update(
            f"two-tower: Ray Train, {train_cfg.epochs} epochs {how} over {len(train_examples)} positives"
        )
        trained = train_retrieval(
            train_examples,
            val_examples,
            model_config,
            train_cfg,
            state.ray,
            logq_correction=config.two_tower.logq_correction,
            initial_state=None if warm is None else warm[0],
        )
        console.print(f"two-tower trained: {_fmt(trained.metrics)}")

        status.update("item embeddings from the latest features, FAISS index")
        item_rows = historical_features(
            store, pd.DataFrame({"item_id": catalog, "event_timestamp": latest}), TWO_TOWER_FEATURE_SERVICE
        )
        model = TwoTowerModel(model_config)
        model.load_state_dict(trained.state_dict)
        model.eval()
        with torch.no_grad():
            item_emb = model.item_tower(
                torch.as_tensor(ex.lookup(pd.Series(catalog), items)),
                torch.as_tensor(
                    item_dense_from_frame(item_rows, None if content is None else content.rows(catalog))
                ),
            ).numpy()

        state.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=state.root, prefix=".train-") as tmp:
            tower_dir, ranker_dir = Path(tmp) / "two_tower", Path(tmp) / "ranker"
            write_retrieval_artifacts(
                tower_dir,
                trained.state_dict,
                model_config,
                users,
                items,
                catalog,
                item_emb,
                {u: sorted(s) for u, s in ex.items_by_user(dataset.events).items()},
                ex.popularity(dataset.events),
                config.two_tower.index,
                content,
                # Serving reads the history as of everything the model was trained from.
                ex.history_at_cut(dataset.events, users, tt.history_length) if tt.history_length else None,
            )
            retrieval = RetrievalModel.load(tower_dir, "candidate")

            status.update("ranker: candidates for validation users at their window start")
            n = config.ranker.n_candidates
            ranker_window = ex.sample_window(split.validation, config.ranker.max_users, config.ranker.seed)
            candidates, starts = window_candidates(
                retrieval,
                store,
                historical_features,
                split.train,
                ranker_window,
                grid,
                n,
                progress=lambda message: status.update(f"ranker: {message}"),
            )
            relevant = ex.items_by_user(ex.positives(ranker_window))
            labels = ex.candidate_labels(candidates, relevant)
            n_relevant = sum(len(v) for u, v in relevant.items() if u in set(starts["user_id"]))
            candidate_recall = float(labels.sum()) / max(n_relevant, 1)

            service, kind = config.ranker.feature_service, config.ranker.kind
            with_knn = kind == "lightgbm" and config.ranker.item_knn
            neighbours = config.ranker.item_knn_neighbours
            status.update(f"ranker: {service} features for {len(candidates)} candidates, {kind}")
            # The training rows' item-kNN signal knows what their users' history knew: the training split.
            knn = ItemKNNSignal.fit(split.train, neighbours) if with_knn else None
            features, sizes, _ = ranker_inputs(store, historical_features, candidates, service, knn)
            if kind == "multitask":
                ranked = _train_multitask(
                    config, state, candidates, ranker_window, dataset.items, features, sizes, ranker_dir
                )
            else:
                ranked = train_ranker(features, labels, sizes, config.ranker, item_knn=with_knn)
                # Serving scores with everything the models were trained from, as seen.json and history.json.
                served_knn = ItemKNNSignal.fit(dataset.events, neighbours) if with_knn else None
                write_ranker_artifacts(ranker_dir, ranked.booster, ranked.calibrator, service, served_knn)
            console.print(f"ranker trained: {_fmt(ranked.metrics)}")

            status.update("MLflow: logging and registering both models")
            base_tags = {"dataset_version": version, FINGERPRINT_TAG: fingerprint}
            tower_metrics = {**trained.metrics, f"val_candidate_recall_at_{n}": candidate_recall}
            tower_run, tower_version = log_and_register(
                state,
                model_name=TWO_TOWER_MODEL,
                kind="retrieval",
                artifact_dir=tower_dir,
                params={
                    **tt.model_dump(mode="json"),
                    "logq_correction": config.two_tower.logq_correction,
                    "n_users": len(users),
                    "n_items": len(items),
                    "n_catalog": len(catalog),
                    "content_dim": model_config.content_dim,
                    "n_train_examples": len(train_examples),
                    "n_validation_examples": len(val_examples),
                    **({} if warm is None else warm[1].as_params()),
                },
                metrics=tower_metrics,
                tags={**base_tags, "feature_service": TWO_TOWER_FEATURE_SERVICE, **plan.tags()},
                alias=alias,
                metric_history=trained.history,
            )
            ranker_run, ranker_version = log_and_register(
                state,
                model_name=RANKER_MODEL,
                kind="ranking",
                artifact_dir=ranker_dir,
                params={**config.ranker.model_dump(mode="json"), "two_tower_version": tower_version},
                metrics=ranked.metrics,
                tags={**base_tags, "feature_service": service, "ranker_kind": kind},
                alias=alias,
            )
    shutil.rmtree(state.ray, ignore_errors=True)
    return TrainSummary(
        dataset_version=version,
        skipped=False,
        two_tower_version=tower_version,
        ranker_version=ranker_version,
        two_tower_run_id=tower_run,
        ranker_run_id=ranker_run,
        fingerprint=fingerprint,
        seconds=time.perf_counter() - started,
        metrics={**tower_metrics, **ranked.metrics},
        alias=alias,
        retrain_mode=plan.mode,
        finetuned_from=plan.finetuned_from,
        finetune_refused=plan.refused,
    )


def _train_multitask(
    config: PipelineConfig,
    state: StateDir,
    candidates: pd.DataFrame,
    window_events: pd.DataFrame,
    items: pd.DataFrame,
    features: Any,
    sizes: Any,
    ranker_dir: Path,
) -> Any:
    """Train the multi-task ranker on the candidate rows (click and satisfaction labels from the
    validation window) through Ray Train, and write its artefacts."""
    from training.multitask_runtime import write_multitask_artifacts
    from training.multitask_train import surface_weights, task_labels, train_multitask_ranker

    # ranker_inputs orders rows stably by user, as sorted_by_user already did: labels stay aligned.
    labels = task_labels(candidates, window_events, items)
    ranked = train_multitask_ranker(features, labels, sizes, config.ranker, state.ray)
    write_multitask_artifacts(
        ranker_dir,
        ranked.state_dict,
        ranked.model_config,
        surface_weights(config.ranker),
        ranked.int8,
        ranked.calibrator,
        config.ranker.feature_service,
    )
    return ranked


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
