"""The one state directory every stage reads from and writes to.

Layout (all paths below ``root``)::

    datasets/<dataset_version>/   immutable ingest snapshot: interaction_events/event_date=*/ (Parquet,
                                  partitioned by event date), items, users, quarantine, manifest.json
    datasets/LATEST               the newest dataset_version, one line
    splits/<dataset_version>/     train / validation / test events (Parquet); global/ for the global split
    pairs/<dataset_version>/      ranker training pairs, one folder per pairs settings
    offline/                      Feast offline store: batch feature tables (Parquet)
    content_cache/                item content embeddings by hash of model and text (Parquet parts)
    feast/                        Feast registry and the SQLite online store
    mlflow/                       MLflow tracking database and artefacts
    ray/                          Ray Train run storage while a training job runs
    tuning/<dataset_version>/<target>/best.yaml  the best trial of `recsys tune`
    simulated/                    the simulator's partitioned event log, items and users
    evaluation/<dataset_version>/ metrics.json and the printed table; global/ for the global split
    drift/<dataset_version>/      Evidently HTML report and drift.json
    events/event_date=<date>/     events received by the serving API (Parquet, fsync'd)
    monitor/runs/<run_id>/        a monitor or loop run: verdict.json, Evidently reports
    monitor/index.html            every run, newest first
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class MissingStateError(RuntimeError):
    """A stage needs the output of an earlier stage that has not run."""


@dataclass(frozen=True)
class StateDir:
    root: Path

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    def dataset(self, version: str) -> Path:
        return self.datasets / version

    def latest_dataset_version(self) -> str:
        pointer = self.datasets / "LATEST"
        if not pointer.exists():
            raise MissingStateError(f"no dataset under {self.datasets}: run `recsys ingest` first")
        return pointer.read_text().strip()

    def resolve_version(self, version: str | None) -> str:
        """The given dataset version, checked to exist, or the latest one."""
        chosen = version or self.latest_dataset_version()
        if not (self.dataset(chosen) / "manifest.json").exists():
            raise MissingStateError(f"dataset version {chosen!r} not found under {self.datasets}")
        return chosen

    def splits(self, version: str) -> Path:
        return self.root / "splits" / version

    @property
    def offline(self) -> Path:
        return self.root / "offline"

    @property
    def feast(self) -> Path:
        return self.root / "feast"

    @property
    def content_cache(self) -> Path:
        """Item content embeddings keyed by a hash of model and text, shared by every dataset version."""
        return self.root / "content_cache"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def mlflow_tracking_uri(self) -> str:
        return f"sqlite:///{self.mlflow / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow / "artifacts"

    @property
    def simulated(self) -> Path:
        """Where `recsys simulate` writes a simulated platform log unless told otherwise."""
        return self.root / "simulated"

    @property
    def ray(self) -> Path:
        """Ray Train's run storage (checkpoints); removed after a run is registered in MLflow."""
        return self.root / "ray"

    def tuning(self, version: str, target: str) -> Path:
        """`recsys tune` results of one dataset version and target (best.yaml)."""
        return self.root / "tuning" / version / target

    def evaluation(self, version: str) -> Path:
        return self.root / "evaluation" / version

    def drift(self, version: str) -> Path:
        return self.root / "drift" / version

    @property
    def monitor(self) -> Path:
        """`recsys monitor` and `recsys loop` runs (one folder each) and their index.html."""
        return self.root / "monitor"

    @property
    def events(self) -> Path:
        """The serving API's event log: `event_date=YYYY-MM-DD/part-*.parquet` (`POST /events`)."""
        return self.root / "events"

    @property
    def experiments_file(self) -> Path:
        """The running online experiments (variants and traffic shares); serving watches this file."""
        return self.root / "experiments" / "experiments.json"
