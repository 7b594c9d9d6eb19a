"""The `recsys` command: one subcommand per pipeline stage.

Stage modules are imported inside each command so that `recsys --help` does not pay for importing
Spark, Ray, Feast and torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.pretty import Pretty

from recsys.config import ConfigError, PipelineConfig, load_config
from recsys.state import MissingStateError

app = typer.Typer(
    help="Recommendation platform: ingest -> features -> train -> index -> evaluate -> serve, plus drift.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config file (configs/default.yaml).")
SetOption = typer.Option(None, "--set", "-s", help="Override one setting: section.key=value (repeatable).")
VersionOption = typer.Option(None, "--dataset-version", help="Dataset version to use (default: latest).")


def _config(path: Path | None, overrides: list[str] | None) -> PipelineConfig:
    try:
        return load_config(path, overrides)
    except ConfigError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None


def _run(name: str, stage: Callable[[], Any]) -> Any:
    """Run one stage with a timing line; turn expected failures into one readable line and exit 1."""
    started = time.perf_counter()
    console.rule(f"[bold]{name}")
    try:
        result = stage()
    except (MissingStateError, ValueError, FileNotFoundError, FileExistsError) as err:
        console.print(f"[red]error in {name}:[/red] {err}")
        raise typer.Exit(1) from None
    console.print(f"[green]{name} done[/green] in {time.perf_counter() - started:.1f} s")
    if result is not None:
        # The summary in brief: the stages print their own tables; files hold the details.
        console.print(Pretty(result, max_depth=2, max_length=6))
    return result


@app.command()
def ingest(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    source: Path | None = typer.Option(
        None, "--source", help="A CSV or Parquet event log instead of MovieLens."
    ),
    mapping: Path | None = typer.Option(None, "--mapping", help="Column mapping YAML for --source."),
) -> None:
    """Read MovieLens (or --source with --mapping), check the contracts, quarantine bad rows, clean,
    write a versioned snapshot and its split."""
    from evaluation.split import run_split
    from recsys.ingest.stage import run_ingest

    cfg = _config(config, set_)
    summary = _run("ingest", lambda: run_ingest(cfg, source=source, mapping=mapping))
    _run("split", lambda: run_split(cfg, summary.dataset_version))


@app.command()
def features(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    dataset_version: str | None = VersionOption,
) -> None:
    """Compute batch features with Spark, `feast apply`, and materialise them into the online store."""
    from recsys.features.stage import run_features

    cfg = _config(config, set_)
    _run("features", lambda: run_features(cfg, dataset_version))


@app.command()
def train(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    dataset_version: str | None = VersionOption,
) -> None:
    """Train the two-tower retriever (Ray Train) and the LightGBM ranker; register both in MLflow."""
    from training.stage import run_train

    cfg = _config(config, set_)
    _run("train", lambda: run_train(cfg, dataset_version))


@app.command()
def index(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    dataset_version: str | None = VersionOption,
) -> None:
    """Rebuild the FAISS index over all item embeddings of the champion retriever."""
    from training.index_stage import run_index

    cfg = _config(config, set_)
    _run("index", lambda: run_index(cfg, dataset_version))


@app.command()
def evaluate(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    dataset_version: str | None = VersionOption,
) -> None:
    """Ranking and beyond-accuracy metrics on the temporal test split: baselines vs retrieval vs + ranking."""
    from evaluation.evaluate import run_evaluate

    cfg = _config(config, set_)
    _run("evaluate", lambda: run_evaluate(cfg, dataset_version))


@app.command()
def drift(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    dataset_version: str | None = VersionOption,
) -> None:
    """Write an Evidently drift report (HTML) and a JSON verdict: reference window vs current window."""
    from monitoring.drift import run_drift

    cfg = _config(config, set_)
    _run("drift", lambda: run_drift(cfg, dataset_version))


@app.command()
def simulate(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: <state_dir>/simulated)."),
) -> None:
    """Simulate a platform's event log (users, items, sessions, clicks, conversions, bots, drift)."""
    from recsys.simulator.stage import run_simulate
    from recsys.state import StateDir

    cfg = _config(config, set_)
    _run("simulate", lambda: run_simulate(cfg.simulator, out or StateDir(cfg.state_dir).simulated))


@app.command()
def serve(config: Path | None = ConfigOption, set_: list[str] | None = SetOption) -> None:
    """Serve POST /recommend and GET /healthz with Ray Serve until interrupted."""
    from serving.app import run_serve

    cfg = _config(config, set_)
    _run("serve", lambda: run_serve(cfg, blocking=True))


data_app = typer.Typer(help="Dataset utilities.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("export-split")
def export_split(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    dataset_version: str | None = VersionOption,
    out: Path = typer.Option(..., "--out", help="Folder for train/validation/test.parquet."),
) -> None:
    """Write the split's interactions as plain Parquet (user_id, item_id, timestamp, event_type)."""
    from evaluation.split import export_split as export
    from recsys.state import StateDir

    cfg = _config(config, set_)
    state = StateDir(cfg.state_dir)
    _run("export-split", lambda: export(state, state.resolve_version(dataset_version), out))


@app.command()
def pipeline(config: Path | None = ConfigOption, set_: list[str] | None = SetOption) -> None:
    """Run every offline stage in order: ingest, split, features, train, index, evaluate, drift."""
    from evaluation.evaluate import run_evaluate
    from evaluation.split import run_split
    from monitoring.drift import run_drift
    from recsys.features.stage import run_features
    from recsys.ingest.stage import run_ingest
    from training.index_stage import run_index
    from training.stage import run_train

    cfg = _config(config, set_)
    started = time.perf_counter()
    version = _run("ingest", lambda: run_ingest(cfg)).dataset_version
    _run("split", lambda: run_split(cfg, version))
    _run("features", lambda: run_features(cfg, version))
    _run("train", lambda: run_train(cfg, version))
    _run("index", lambda: run_index(cfg, version))
    _run("evaluate", lambda: run_evaluate(cfg, version))
    _run("drift", lambda: run_drift(cfg, version))
    console.rule(f"[bold green]pipeline done in {time.perf_counter() - started:.0f} s (dataset {version})")
