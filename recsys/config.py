"""Typed configuration for every stage, loaded from one YAML file.

Each component owns a frozen model with ``extra="forbid"`` so that a typo in a YAML key is an error,
not a silently ignored setting.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evaluation.experiments.settings import ExperimentsConfig
from recsys.ingest.cleaning import CleaningConfig
from recsys.ingest.pairs import PairsConfig
from recsys.simulator.settings import SimulatorConfig
from serving.exploration import ExplorationConfig
from serving.reranking import RerankConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "ml-latest-small"


class ConfigError(ValueError):
    """A configuration file that cannot be read or does not validate."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IngestConfig(_Frozen):
    data_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("RECSYS_DATA_DIR") or DEFAULT_DATA_DIR)
    )
    # Keep only this many users (chosen by a seeded hash), for quick runs and tests; None keeps all.
    sample_users: int | None = Field(default=None, ge=1)
    seed: int = 0
    # Ratings at or above this become `like` events; below `skip_below` they become `skip`.
    like_threshold: float = 4.0
    skip_below: float = 2.5
    session_gap_minutes: int = Field(default=30, ge=1)
    # What `recsys ingest` and `recsys pipeline` read: MovieLens (`data_dir`), the simulator's output
    # (`simulated_dir`, default <state_dir>/simulated, generated from the `simulator` section when
    # absent), or any log (`log` with its column `mapping`).
    source: Literal["movielens", "simulator", "log"] = "movielens"
    simulated_dir: Path | None = None
    log: Path | None = None
    mapping: Path | None = None


class FeaturesConfig(_Frozen):
    spark_master: str = "local[2]"
    # JVM heap of the local Spark driver (which also runs the tasks in local mode), and the most the job
    # may collect into it: the feature tables are collected once to be written as sorted single files.
    # Spark's 1g default ran out of heap on the simulated 10M-event log (1M users).
    spark_driver_memory: str = Field(default="4g", pattern=r"^[1-9][0-9]*[mg]$")
    # Batch features are snapshotted at this cadence so that point-in-time joins see only the past.
    snapshot_every_days: int = Field(default=90, ge=1)
    # Item content embeddings (all-MiniLM-L6-v2, recsys/features/content.py) at ingest, served as the
    # `item_content` feature view. ~2.5 ms an item on 2 CPU cores (cached by text, so only new items pay):
    # the MovieLens configs turn it on; off by default, so that large simulated catalogues do not pay it.
    content_embeddings: bool = False
    online_store: Literal["sqlite", "redis"] = "sqlite"
    # URLs that may carry a password come from the environment; a config file or --set may not hold one.
    redis_url: str = Field(
        default_factory=lambda: os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0", repr=False
    )
    # A Redis that hangs fails the read after this long (connect, and each socket operation), so serving
    # falls back instead of waiting.
    redis_timeout_s: float = Field(default=1.0, gt=0)
    # `file`: <state>/feast/registry.db; `sql`: a shared registry database at `registry_url`.
    registry: Literal["file", "sql"] = "file"
    # SQLAlchemy URL of the SQL registry, e.g. postgresql+psycopg://feast@db.internal:5432/feast.
    registry_url: str = Field(default_factory=lambda: os.environ.get("RECSYS_REGISTRY_URL") or "", repr=False)


class SplitConfig(_Frozen):
    # `per_user`: each user's newest events are held out; `global`: one time cut for everybody,
    # train < cutoff <= validation < cutoff + validation_days <= test.
    method: Literal["per_user", "global"] = "per_user"
    validation_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.2, gt=0, lt=0.5)
    min_user_events: int = Field(default=5, ge=3)
    # Global split: the cutoff T (default: the newest event minus test_days minus validation_days).
    cutoff: datetime | None = None
    validation_days: float = Field(default=7.0, gt=0)
    test_days: float = Field(default=7.0, gt=0)


class IndexConfig(_Frozen):
    """How the item index is built: exact search for small catalogues, IVF (approximate) above."""

    # Exact inner-product search below this many items; an inverted-file index at or above it.
    exact_below: int = Field(default=100_000, ge=1)
    # IVF lists; 0 picks 4 x sqrt(n items), FAISS's usual range.
    nlist: int = Field(default=0, ge=0)
    # Lists searched per query: recall against speed (benchmarks/index.py measures both).
    nprobe: int = Field(default=32, ge=1)
    # Vectors k-means sees per list when training the coarse quantiser (FAISS warns below 39).
    train_points_per_list: int = Field(default=64, ge=39)
    # Search on GPU when FAISS has GPU support and a GPU is visible ("auto"), always, or never.
    use_gpu: Literal["auto", "yes", "no"] = "auto"


class TwoTowerConfig(_Frozen):
    embedding_dim: int = Field(default=64, ge=4)
    hidden_dim: int = Field(default=128, ge=4)
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=512, ge=8)
    learning_rate: float = Field(default=3e-3, gt=0)
    weight_decay: float = Field(default=1e-6, ge=0)
    # 0.2 with the history input: retrieval Recall@100 0.3453 on MovieLens against 0.3307 at 0.1
    # (docs/models.md, "History"); NDCG@10 gives up 0.006 for it.
    temperature: float = Field(default=0.2, gt=0)
    # Subtract log item frequency from in-batch logits so popular items are not over-penalised as negatives.
    logq_correction: bool = True
    # The item tower also reads the item's content embedding (features.content_embeddings must be on to
    # have any); items unseen in training are then placed by what they are about, not by genres alone.
    content_embeddings: bool = True
    # The user tower mean-pools the ID embeddings of the user's last `history_length` positive items
    # (strictly before each example; at serving, as of the model's data); 0 turns the input off.
    history_length: int = Field(default=20, ge=0)
    # Pool the item tower's own ID table (True) or a separate table (False).
    history_shared: bool = True
    # Share of user and item ids replaced by the unknown row during training, so cold ids are served
    # by a row that learnt to lean on features, history and content.
    id_dropout: float = Field(default=0.0, ge=0, lt=1)
    num_workers: int = Field(default=1, ge=1)
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    # Sparse gradients for the ID tables, updated by lazy Adam (training/retrieval.py, TowerOptimizer):
    # only the rows a batch looked up move. "auto": when the user and item tables hold at least
    # SPARSE_TABLE_ROWS rows together, where dense Adam is 31x slower (1M users, 100k items); below it
    # dense Adam costs little and measured better on MovieLens (docs/models.md, "Sparse ID tables").
    # One worker only: several all-reduce dense gradients.
    sparse_embeddings: Literal["auto", "yes", "no"] = "auto"
    # Stop after this many epochs in a row without a better validation recall@10 and keep the best epoch's
    # weights; None (the default): every epoch runs and the last one is the model. Off by default: the
    # in-batch validation recall is noisy on small validation windows: on the simulated loop world keeping
    # its best epoch changed the models by noise (docs/models.md, "Early stopping").
    early_stopping_patience: int | None = Field(default=None, ge=1)
    # bfloat16 autocast for the towers: "auto" on a CUDA device, "yes" anywhere (CPUs with bfloat16).
    mixed_precision: Literal["auto", "yes", "no"] = "auto"
    seed: int = 0
    index: IndexConfig = IndexConfig()
    # Fine-tuning from the champion (`loop.retrain: finetune`): its weights are the starting point, so
    # fewer passes suffice, and a smaller step refines what it learnt on older data instead of
    # overwriting it. Both only act in that mode (a full retrain's fingerprint leaves them out).
    finetune_epochs: int = Field(default=3, ge=1)
    finetune_lr_factor: float = Field(default=0.3, gt=0, le=1)


class HeadWeights(_Frozen):
    """Weights of the multi-task ranker's click and satisfaction heads (loss weights, or the mix of the
    heads' probabilities in a surface's ranking score, normalised to sum 1 there)."""

    click: float = Field(default=0.5, ge=0)
    satisfaction: float = Field(default=0.5, ge=0)

    @model_validator(mode="after")
    def _not_all_zero(self) -> HeadWeights:
        if self.click + self.satisfaction <= 0:
            raise ValueError("head weights must not all be zero")
        return self


def _default_surface_weights() -> dict[str, HeadWeights]:
    # Satisfaction leads where the list is the product (home, e-mail); search and the item page follow
    # intent, so a likely click counts more there. `default` scores evaluation and unknown surfaces.
    return {
        "default": HeadWeights(click=0.2, satisfaction=0.8),
        "homepage": HeadWeights(click=0.3, satisfaction=0.7),
        "search": HeadWeights(click=0.6, satisfaction=0.4),
        "email": HeadWeights(click=0.1, satisfaction=0.9),
        "pdp": HeadWeights(click=0.5, satisfaction=0.5),
        "more_like_this": HeadWeights(click=0.4, satisfaction=0.6),
    }


class MultiTaskConfig(_Frozen):
    """The multi-task torch ranker (training/multitask.py), used when `ranker.kind` is `multitask`."""

    hidden_sizes: tuple[int, ...] = (128, 64)
    cross_layers: int = Field(default=2, ge=0)
    head_hidden: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    epochs: int = Field(default=20, ge=1)
    # Stop after this many epochs without a better held-out mean AUC of the heads.
    patience: int = Field(default=3, ge=1)
    batch_size: int = Field(default=512, ge=8)
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)
    task_weights: HeadWeights = HeadWeights(click=1.0, satisfaction=1.0)
    # Per request surface (recsys.vocab.SURFACES, plus `default`), the mix of head probabilities served.
    surface_weights: dict[str, HeadWeights] = Field(default_factory=_default_surface_weights)
    # Try INT8 (dynamic quantisation of the Linear layers) and serve it when its held-out AUC is less than
    # `int8_max_auc_drop` (relative) below fp32's; both AUCs and the decision are logged. Off by default:
    # on this model's small layers INT8 scored 500 candidates slower than fp32 (docs/models.md).
    int8: bool = False
    int8_max_auc_drop: float = Field(default=0.005, gt=0, lt=1)
    num_workers: int = Field(default=1, ge=1)
    use_gpu: Literal["auto", "yes", "no"] = "auto"

    @field_validator("surface_weights")
    @classmethod
    def _known_surfaces(cls, value: dict[str, HeadWeights]) -> dict[str, HeadWeights]:
        from recsys.vocab import SURFACES

        unknown = sorted(set(value) - {"default", *SURFACES})
        if unknown:
            raise ValueError(f"unknown surfaces {unknown}; known: default, {', '.join(SURFACES)}")
        if "default" not in value:
            raise ValueError("surface_weights needs a `default` entry")
        return value

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_sizes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or min(value) < 1:
            raise ValueError("hidden_sizes must list at least one positive width")
        return value


class RankerConfig(_Frozen):
    # `lightgbm`: lambdarank (training/ranker.py); `multitask`: the torch click/satisfaction ranker.
    kind: Literal["lightgbm", "multitask"] = "lightgbm"
    multitask: MultiTaskConfig = MultiTaskConfig()
    n_candidates: int = Field(default=200, ge=10)
    # LightGBM. The ranker learns from a few hundred validation users, so the defaults are small,
    # regularised trees on a pointwise objective: on MovieLens they lift NDCG@10 over lambdarank with
    # 31 leaves (docs/models.md, "Ranking: objective and cross-fitting").
    objective: Literal["binary", "lambdarank"] = "binary"
    num_leaves: int = Field(default=7, ge=2)
    # The most trees; cross-validation (or the holdout) picks how many are kept.
    n_estimators: int = Field(default=1000, ge=1)
    learning_rate: float = Field(default=0.03, gt=0)
    min_child_samples: int = Field(default=100, ge=1)
    feature_fraction: float = Field(default=0.7, gt=0, le=1)
    bagging_fraction: float = Field(default=0.8, gt=0, le=1)
    lambda_l2: float = Field(default=10.0, ge=0)
    # Users split into `folds` parts: each part's users pick the tree count (early stopping on NDCG@10)
    # for trees fitted on the others, and are scored out of fold for calibration; the served model is
    # refitted on every user with the mean tree count. 1: one seeded 20% holdout, no refit.
    folds: int = Field(default=5, ge=1, le=20)
    num_threads: int = Field(default=2, ge=1)
    seed: int = 0
    # The Feast feature service the ranker trains on; the model records it and serving reads the same one
    # (docs/features.md: ranker_v2 adds recent activity, cross features and co-view; NDCG@10 on
    # MovieLens, docs/models.md).
    feature_service: Literal["ranker_v1", "ranker_v2"] = "ranker_v2"
    # The LightGBM ranker also reads each candidate's item-kNN score against the user's whole liked
    # history (training/item_knn_signal.py), fitted on the events before the moment judged; the
    # multi-task ranker reads the feature service only. Neighbours kept per item:
    item_knn: bool = True
    item_knn_neighbours: int = Field(default=100, ge=1)
    # Users of the validation window the ranker learns from, a seeded draw above this: a few tens of
    # thousands of query groups are plenty for small trees, and every one costs candidates and feature
    # reads (a 1M-user log holds hundreds of thousands). None: all of them.
    max_users: int | None = Field(default=50_000, ge=10)


class GateConfig(_Frozen):
    """Promotion gate thresholds (evaluation/gate.py); every check compares on the same test requests."""

    ndcg_k: int = Field(default=10, ge=1)
    # The challenger's NDCG@ndcg_k may be at most this much (absolute) below the champion's.
    ndcg_margin: float = Field(default=0.01, ge=0)
    # PSI of the ranker's score distribution, challenger vs champion.
    max_score_psi: float = Field(default=0.2, gt=0)
    # Floors on the challenger's catalogue coverage and category diversity of its top ndcg_k lists.
    min_coverage: float = Field(default=0.005, ge=0, le=1)
    min_diversity: float = Field(default=0.3, ge=0, le=1)
    # In-process serving path (retrieval -> ranking -> re-ranking), p99 per request; the spec's 200 ms
    # end-to-end less 30 ms of network.
    max_p99_ms: float = Field(default=170.0, gt=0)
    latency_requests: int = Field(default=50, ge=5)


class EvaluateConfig(_Frozen):
    ks: tuple[int, ...] = (10, 50, 100)
    # Simple collaborative filters always in the table beside popularity (training/baselines.py names).
    baselines: tuple[str, ...] = ("item-knn", "implicit-als")
    # Slices: users with fewer history events are cold-start; at or above this quantile, power users;
    # items outside the head holding `head_share` of history interactions are the long tail.
    cold_start_max: int = Field(default=5, ge=1)
    power_quantile: float = Field(default=0.9, gt=0, lt=1)
    head_share: float = Field(default=0.2, gt=0, le=1)
    # Also run the serving code (retrieval -> ranking -> re-ranking) over the judged users: the `served` row.
    replay: bool = True
    gate: GateConfig = GateConfig()


# What takes HTTP in front of the ingress replicas (`serve.http_ingress`; serving.http_ingress).
HttpIngress = Literal["haproxy", "proxy"]


class ServeConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # What takes HTTP on host:port when `recsys serve` starts its own Ray: "haproxy", an HAProxy that
    # Serve configures to send each request straight to an ingress replica's own HTTP port (Ray's
    # throughput-optimised mode: no proxy actor hop, and it follows replicas as they are replaced);
    # "proxy", Serve's HTTP proxy actor. On a cluster named by RAY_ADDRESS the cluster's own environment
    # decides (docs/serving.md, "Ray Serve settings").
    http_ingress: HttpIngress = "haproxy"
    n_candidates: int = Field(default=200, ge=10)
    max_k: int = Field(default=100, ge=1)
    # Past this, the answer is given in retrieval order (fallback) rather than late.
    ranking_timeout_s: float = Field(default=1.0, gt=0)
    rerank: RerankConfig = RerankConfig()
    # "single" runs retrieval and ranking inside the ingress process (no handle hop; scale it with
    # ingress_replicas); "fused" runs retrieval there and gives ranking a deployment; "split" gives each
    # stage a deployment of its own.
    graph: Literal["single", "fused", "split"] = "single"
    # "single": rank in a worker thread of the ingress (the ranking deadline holds, and the event loop
    # keeps answering past capacity) or, false, on its event loop (~15% less CPU per request with 1M
    # items, but no deadline fires while the loop ranks; docs/serving.md, "The graph").
    ranking_in_thread: bool = True
    # Ingress replicas. Each keeps its own prediction cache, no-repeat window and /metrics counters.
    ingress_replicas: int = Field(default=1, ge=1)
    # Prediction cache per ingress replica; 0 turns it off.
    cache_ttl_s: float = Field(default=30.0, ge=0)
    cache_max_entries: int = Field(default=100_000, ge=1)
    # Session: engaged items from POST /events, blended into the user's genre affinity.
    session_items: int = Field(default=10, ge=1)
    session_ttl_s: float = Field(default=3600.0, gt=0)
    session_weight: float = Field(default=0.5, ge=0, le=1)
    session_boost: float = Field(default=0.3, ge=0)
    max_events_per_batch: int = Field(default=1000, ge=1)
    # Ranking's @serve.batch; max_ongoing_requests must exceed the batch size or batches never fill.
    ranking_max_batch_size: int = Field(default=8, ge=1)
    ranking_batch_wait_timeout_s: float = Field(default=0.002, ge=0)
    ranking_max_ongoing_requests: int = Field(default=32, ge=1)
    # The ingress is async and mostly waits on other stages: Serve's default (5 at a time) would queue
    # requests at the proxy behind a slow stage, past every deadline, instead of falling back.
    ingress_max_ongoing_requests: int = Field(default=200, ge=1)
    # Requests one ingress replica takes into retrieval and ranking at once; past it a request is answered
    # at once with the popularity list (fallback `overloaded`) instead of queueing. 0: no limit.
    max_in_flight: int = Field(default=8, ge=0)
    experiments_check_s: float = Field(default=1.0, gt=0)
    # Bearer token of the admin endpoints; unset (and RECSYS_ADMIN_TOKEN unset) disables them.
    admin_token: str | None = Field(default_factory=lambda: os.environ.get("RECSYS_ADMIN_TOKEN") or None)
    exploration: ExplorationConfig = ExplorationConfig()
    # Online reads straight from the online store's tables (recsys.features.online_read); false: Feast's
    # get_online_features. Item features are cached per replica for item_cache_ttl_s (0: no cache).
    fast_feature_reads: bool = True
    item_cache_ttl_s: float = Field(default=60.0, ge=0)
    item_cache_max_entries: int = Field(default=200_000, ge=1)
    # With fast_feature_reads, the packed values `recsys features` writes after materialising
    # (recsys.features.packed_store): "mget" reads pointer, user and candidates with one MGET / SELECT;
    # "table" also holds every item record in memory per replica (63 bytes an item for ranker_v1, plus
    # its id in a dict; reloaded when a new generation goes live); "off" reads the tables as above.
    # Services that are not packed are read from the tables either way.
    packed_feature_reads: Literal["off", "mget", "table"] = "table"
    # Seconds between checks of the champion aliases; a moved alias is loaded and switched to. 0: never.
    champion_poll_s: float = Field(default=30.0, ge=0)
    # A recsys-ranker alias or version scored beside the champion, off the response path, and logged to
    # <state>/shadow/; None: no shadow scoring.
    shadow_ranker: str | None = None


class DriftConfig(_Frozen):
    # Both windows end at the newest event; `current` is the most recent window, `reference` the one before.
    current_days: int = Field(default=365, ge=1)
    reference_days: int = Field(default=365, ge=1)
    drift_share_threshold: float = Field(default=0.5, gt=0, le=1)


class MonitorConfig(_Frozen):
    # `recsys monitor`: the current window ends at the newest event (or --at); the reference window is the
    # `reference_window` before it (None: as long as the current window). Durations look like 1h, 24h, 7d.
    window: str = Field(default="7d", pattern=r"^[1-9][0-9]*[smhd]$")
    reference_window: str | None = Field(default=None, pattern=r"^[1-9][0-9]*[smhd]$")
    # None: the shipped monitoring/rules.yaml.
    rules: Path | None = None
    psi_bins: int = Field(default=10, ge=2)
    # Users per window whose champion scores and embeddings are compared (model drift); 0 turns it off.
    model_sample_users: int = Field(default=500, ge=0)
    evidently_reports: bool = True


class LoopConfig(_Frozen):
    # `recsys loop`: when a retrain is due without drift (daily ranker, weekly retrieval).
    schedule: Path = REPO_ROOT / "configs" / "schedules" / "default.yaml"
    # Shadow scoring: users of the drifted window both models rank; the challenger must not lose NDCG.
    shadow_users: int = Field(default=200, ge=1)
    shadow_k: int = Field(default=10, ge=1)
    # Retrain when the schedule is due even without drift; False retrains on drift only.
    follow_schedule: bool = True
    # `full` trains the two-tower challenger from scratch; `finetune` starts it from the champion's
    # weights (ids known to both keep their rows) for `two_tower.finetune_epochs`: cheaper, and it keeps
    # what the champion learnt about ids the new window barely shows. It falls back to `full`, recorded,
    # when there is no champion or its architecture differs. The ranker is always retrained in full.
    retrain: Literal["full", "finetune"] = "full"


class SearchDimension(_Frozen):
    """One tuned setting's range: `choice` among `values`, or `uniform` / `loguniform` in [low, high]."""

    kind: Literal["choice", "uniform", "loguniform"]
    values: tuple[bool | int | float | str, ...] = ()
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _well_formed(self) -> SearchDimension:
        if self.kind == "choice":
            if not self.values:
                raise ValueError("a choice needs at least one value")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.kind} needs low < high")
        elif self.kind == "loguniform" and self.low <= 0:
            raise ValueError("loguniform needs low > 0")
        return self


def _two_tower_space() -> dict[str, SearchDimension]:
    return {
        "two_tower.embedding_dim": SearchDimension(kind="choice", values=(32, 64, 128)),
        "two_tower.learning_rate": SearchDimension(kind="loguniform", low=1e-3, high=1e-2),
        "two_tower.batch_size": SearchDimension(kind="choice", values=(256, 512, 1024)),
        "two_tower.temperature": SearchDimension(kind="loguniform", low=0.05, high=0.5),
    }


def _multitask_space() -> dict[str, SearchDimension]:
    return {
        "ranker.multitask.task_weights.click": SearchDimension(kind="uniform", low=0.1, high=1.0),
        "ranker.multitask.task_weights.satisfaction": SearchDimension(kind="uniform", low=0.1, high=1.0),
    }


class TuneConfig(_Frozen):
    """`recsys tune` (training/tune.py): Optuna's TPE over each target's space, one Ray Tune trial each.

    A space maps a setting, written as for `--set`, to its range; the trainer's own validation metric
    is the objective (two-tower: validation Recall@10; multi-task: the held-out AUC of the served score).
    """

    trials: int = Field(default=8, ge=1)
    # Tune on this many users of the dataset version (seeded, as ingest.sample_users); None: all users.
    sample_users: int | None = Field(default=None, ge=2)
    # Epochs each trial trains (two_tower.epochs or ranker.multitask.epochs); None keeps the config's.
    epochs: int | None = Field(default=None, ge=1)
    seed: int = 0
    # Trials at once; 0 sizes it to the machine (CPUs, or GPUs when trials train on one).
    max_concurrent_trials: int = Field(default=0, ge=0)
    two_tower: dict[str, SearchDimension] = Field(default_factory=_two_tower_space)
    multitask: dict[str, SearchDimension] = Field(default_factory=_multitask_space)


class PipelineConfig(_Frozen):
    state_dir: Path = Field(
        default_factory=lambda: Path(os.environ.get("RECSYS_STATE_DIR") or REPO_ROOT / ".state")
    )
    ingest: IngestConfig = IngestConfig()
    cleaning: CleaningConfig = CleaningConfig()
    pairs: PairsConfig = PairsConfig()
    features: FeaturesConfig = FeaturesConfig()
    split: SplitConfig = SplitConfig()
    two_tower: TwoTowerConfig = TwoTowerConfig()
    ranker: RankerConfig = RankerConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    serve: ServeConfig = ServeConfig()
    drift: DriftConfig = DriftConfig()
    monitor: MonitorConfig = MonitorConfig()
    loop: LoopConfig = LoopConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    experiments: ExperimentsConfig = ExperimentsConfig()
    tune: TuneConfig = TuneConfig()


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[leaf] = value


# Settings whose value may carry a password, with the environment variable that may hold one.
_SECRET_URLS = {"redis_url": "REDIS_URL", "registry_url": "RECSYS_REGISTRY_URL"}


def _refuse_passwords(features: Any) -> None:
    """A password written in a config file (or typed into --set) leaks into git and shell history.

    >>> _refuse_passwords({"redis_url": "redis://:hunter2@cache:6379/0"})
    Traceback (most recent call last):
    ...
    recsys.config.ConfigError: features.redis_url holds a password: set REDIS_URL in the environment instead
    """
    from urllib.parse import urlsplit

    if not isinstance(features, dict):
        return
    for key, variable in _SECRET_URLS.items():
        value = features.get(key)
        if isinstance(value, str) and urlsplit(value).password:
            raise ConfigError(f"features.{key} holds a password: set {variable} in the environment instead")


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML config and apply ``section.key=value`` overrides (values parsed as YAML).

    >>> load_config(overrides=["two_tower.epochs=2"]).two_tower.epochs
    2
    """
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"cannot read config {path}: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping, got {type(loaded).__name__}")
        tree = loaded
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    _refuse_passwords(tree.get("features"))
    try:
        config = PipelineConfig.model_validate(tree)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"invalid config at {where}: {first['msg']}") from err
    if path is not None and not config.state_dir.is_absolute():
        # A relative state_dir in a file is relative to that file's project, not the caller's cwd.
        config = config.model_copy(update={"state_dir": (REPO_ROOT / config.state_dir).resolve()})
    return config
