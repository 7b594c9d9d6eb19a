"""The `recsys` command: one subcommand per pipeline stage.

Stage modules are imported inside each command so that `recsys --help` does not pay for importing
Spark, Ray, Feast and torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
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
SplitOption = typer.Option(
    None, "--split", help="Split by time per user (per_user) or with one cut (global); default: split.method."
)


def _split_override(set_: list[str] | None, split: str | None) -> list[str]:
    return [*(set_ or []), *([f"split.method={split}"] if split else [])]


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
    # ConnectionError: a store the stage needs is down (recsys.features.store.FeatureStoreUnavailable).
    except (MissingStateError, ValueError, FileNotFoundError, FileExistsError, ConnectionError) as err:
        # soft_wrap: the message stays one line (a long path would otherwise be broken at the width).
        console.print(f"[red]error in {name}:[/red] {err}", soft_wrap=True)
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
    split: str | None = SplitOption,
) -> None:
    """Read MovieLens (or --source with --mapping), check the contracts, quarantine bad rows, clean,
    write a versioned snapshot and its split."""
    from evaluation.split import run_split
    from recsys.ingest.stage import run_ingest

    cfg = _config(config, _split_override(set_, split))
    summary = _run("ingest", lambda: run_ingest(cfg, source=source, mapping=mapping))
    _run("split", lambda: run_split(cfg, summary.dataset_version))


features_app = typer.Typer(
    help="Batch features: `recsys features` (or `features build`) computes, registers and loads them; "
    "`features materialize` loads the online store alone.",
    invoke_without_command=True,
)
app.add_typer(features_app, name="features")


@features_app.callback()
def features(
    ctx: typer.Context,
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    dataset_version: str | None = VersionOption,
) -> None:
    """Compute batch features with Spark, `feast apply`, and materialise them into the online store."""
    if ctx.invoked_subcommand is None:
        features_build(config, set_, dataset_version)
    else:
        # `recsys features --config X materialize` means the same as `features materialize --config X`.
        ctx.obj = (config, set_)


@features_app.command("build")
def features_build(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    dataset_version: str | None = VersionOption,
) -> None:
    """Compute batch features with Spark, `feast apply`, and materialise them into the online store."""
    from recsys.features.stage import run_features

    cfg = _config(config, set_)
    _run("features", lambda: run_features(cfg, dataset_version))


@features_app.command("materialize")
def features_materialize(
    ctx: typer.Context,
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    end: datetime | None = typer.Option(
        None, "--end", help="Newest snapshot time to load, UTC (default: the newest in the offline tables)."
    ),
    full: bool = typer.Option(
        False, "--full", help="Read the whole history: after a rebuild, or to reload the store as of --end."
    ),
) -> None:
    """Load the online store from the offline tables since the last load; safe to rerun after a crash.

    Reads from the watermark, or the oldest row created since; all history after a rebuild or --full.
    """
    from recsys.features.materialization import materialize_online
    from recsys.state import StateDir

    parent_config, parent_set = ctx.obj if isinstance(ctx.obj, tuple) else (None, None)
    cfg = _config(config or parent_config, [*(parent_set or []), *(set_ or [])])
    state = StateDir(cfg.state_dir)

    def materialize_and_pack() -> Any:
        from recsys.features.packed_store import pack_services
        from recsys.features.store import build_store

        summary = materialize_online(state, cfg.features, end, full)
        # Serving reads the packed copy of the online values: it follows every materialisation.
        pack_services(build_store(state, cfg.features))
        return summary

    _run("materialize", materialize_and_pack)


@app.command()
def train(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    dataset_version: str | None = VersionOption,
    alias: str | None = typer.Option(
        None,
        "--alias",
        help="Registry alias for the new versions: champion (default) or challenger (champion if none yet).",
    ),
    tuned: Path | None = typer.Option(
        None, "--tuned", help="A best.yaml of `recsys tune`: its settings, before any --set."
    ),
) -> None:
    """Train the two-tower retriever (Ray Train) and the ranker (`ranker.kind`); register both in MLflow."""
    from training.stage import run_train
    from training.tune import tuned_overrides

    try:
        tuned_set = tuned_overrides(tuned) if tuned is not None else []
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}", soft_wrap=True)
        raise typer.Exit(1) from None
    cfg = _config(config, [*tuned_set, *(set_ or [])])
    _run("train", lambda: run_train(cfg, dataset_version, alias=alias))


@app.command()
def tune(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    dataset_version: str | None = VersionOption,
    target: str = typer.Option("two_tower", "--target", help="What to tune: two_tower or multitask."),
    trials: int | None = typer.Option(None, "--trials", help="Trials to run (default: tune.trials)."),
    sample_users: int | None = typer.Option(
        None, "--sample-users", help="Tune on this many users first (default: tune.sample_users, or all)."
    ),
    train_best: bool = typer.Option(
        False, "--train", help="Then train once on the full data with the best settings, as challenger."
    ),
) -> None:
    """Search `tune.<target>` with Optuna on Ray Tune; every trial in MLflow, the best in best.yaml.

    two_tower: validation Recall@10 of the two-tower model; multitask: held-out AUC of the multi-task
    ranker over the champion retriever's candidates. Use the result with `recsys train --tuned FILE`.
    """
    from training.tune import TARGETS
    from training.tune_run import run_tune

    cfg = _config(config, set_)
    if target not in TARGETS:
        console.print(f"[red]error in tune:[/red] unknown --target {target!r}; known: {', '.join(TARGETS)}")
        raise typer.Exit(1)
    _run(
        "tune",
        lambda: run_tune(cfg, target, dataset_version, trials, sample_users, train_best),
    )


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
    model: str = typer.Option("champion", "--model", help="Alias (champion, challenger) or ranker version."),
    split: str = typer.Option("test", "--split", help="Window to judge: test or validation."),
) -> None:
    """Metrics, slices and an HTML report of a registered system beside the baselines and the champion."""
    from evaluation.evaluate import run_evaluate

    cfg = _config(config, set_)
    _run("evaluate", lambda: run_evaluate(cfg, dataset_version, model=model, split=split))


@app.command()
def gate(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    dataset_version: str | None = VersionOption,
    challenger: str = typer.Option("challenger", "--challenger", help="Alias or ranker version."),
    champion: str = typer.Option("champion", "--champion", help="Alias or ranker version."),
) -> None:
    """Pass (exit 0) or fail (exit 1, reasons printed) a challenger against the champion."""
    from evaluation.gate import checks_table, run_gate

    cfg = _config(config, set_)
    decision = _run("gate", lambda: run_gate(cfg, dataset_version, challenger, champion))
    for line in checks_table(decision.checks):
        typer.echo(line)
    for reason in decision.reasons:
        typer.echo(f"FAIL: {reason}")
    typer.echo(f"gate {'passed' if decision.passed else 'failed'} (MLflow run {decision.mlflow_run_id})")
    raise typer.Exit(0 if decision.passed else 1)


@app.command()
def promote(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    dataset_version: str | None = VersionOption,
    version: str | None = typer.Option(None, "--version", help="Ranker version (with its retriever)."),
    from_alias: str = typer.Option("challenger", "--from-alias", help="Alias to promote without --version."),
    force: bool = typer.Option(False, "--force", help="Promote even if the gate fails (recorded)."),
) -> None:
    """Gate a system against the champion and, if it passes, make both of its models champions."""
    from evaluation.gate import promote_system

    cfg = _config(config, set_)
    _run("promote", lambda: promote_system(cfg, version or from_alias, force, dataset_version))


@app.command()
def rollback(config: Path | None = ConfigOption, set_: list[str] | None = SetOption) -> None:
    """Restore the previous champion of both the retriever and the ranker."""
    from evaluation.gate import rollback_system

    cfg = _config(config, set_)
    _run("rollback", lambda: rollback_system(cfg))


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
def monitor(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    dataset_version: str | None = VersionOption,
    window: str | None = typer.Option(
        None, "--window", "-w", help="Current window, e.g. 1h, 24h, 7d (default: monitor.window)."
    ),
    at: datetime | None = typer.Option(
        None, "--at", help="End of the current window (default: the newest event)."
    ),
) -> None:
    """Judge the alert rules over a window (data, model, business signals); exit 0 ok, 3 notify, 4 page."""
    from monitoring.monitor import run_monitor

    cfg = _config(config, set_)
    runs: list[Any] = []
    _run("monitor", lambda: runs.append(run_monitor(cfg, window, dataset_version, at)))
    raise typer.Exit(runs[0].exit_code)


@app.command()
def loop(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    window: str | None = typer.Option(None, "--window", "-w", help="Drift window (default: monitor.window)."),
) -> None:
    """Ingest, check drift, and retrain -> gate -> shadow -> promote when drift or the schedule says so;
    exit 4 when a broken upstream made it refuse."""
    from monitoring.loop import run_loop

    cfg = _config(config, set_)
    records: list[Any] = []
    _run("loop", lambda: records.append(run_loop(cfg, window, say=console.print)))
    raise typer.Exit(4 if records[0].status == "page" else 0)


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


@data_app.command("catalogue")
def catalogue(config: Path | None = ConfigOption, set_: list[str] | None = SetOption) -> None:
    """List the dataset versions: source, row counts, event time range (from manifests and footers)."""
    from rich.table import Table

    from recsys.ingest.versions import dataset_catalogue
    from recsys.state import StateDir

    cfg = _config(config, set_)
    entries = dataset_catalogue(StateDir(cfg.state_dir))
    table = Table(title=f"datasets in {cfg.state_dir}")
    for column in ("dataset_version", "created", "source", "events", "items", "users", "quarantined"):
        table.add_column(column, no_wrap=True)
    table.add_column("first event", no_wrap=True)
    table.add_column("last event", no_wrap=True)
    for e in entries:
        table.add_row(
            e.dataset_version + (" (latest)" if e.latest else ""), e.created_at[:19], e.source,
            f"{e.events:,}", f"{e.items:,}", f"{e.users:,}", f"{e.quarantined:,}",
            e.first_event.isoformat()[:19] if e.first_event else "-",
            e.last_event.isoformat()[:19] if e.last_event else "-",
        )  # fmt: skip
    Console().print(table if entries else "no dataset yet: run `recsys ingest`")


@data_app.command("pairs")
def pairs(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    dataset_version: str | None = VersionOption,
    split: str | None = SplitOption,
) -> None:
    """Draw training pairs (positives, hard and sampled negatives) from the train split of a version."""
    from recsys.ingest.pairs import run_pairs

    cfg = _config(config, _split_override(set_, split))
    _run("pairs", lambda: run_pairs(cfg, dataset_version))


@data_app.command("export-split")
def export_split(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    dataset_version: str | None = VersionOption,
    out: Path = typer.Option(..., "--out", help="Folder for train/validation/test.parquet."),
    split: str | None = SplitOption,
) -> None:
    """Write the split's interactions as plain Parquet (user_id, item_id, timestamp, event_type)."""
    from evaluation.split import export_split as export
    from recsys.state import StateDir

    cfg = _config(config, _split_override(set_, split))
    state = StateDir(cfg.state_dir)
    _run(
        "export-split",
        lambda: export(state, state.resolve_version(dataset_version), out, cfg.split.method),
    )


experiment_app = typer.Typer(
    help="Online experiments on the simulated platform: A/B, A/A, interleaving, off-policy, canary.",
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")


def _experiment(config: Path | None, set_: list[str] | None, kind: str, **options: Any) -> None:
    from evaluation.experiments.stage import run_experiment

    cfg = _config(config, set_)
    _run(f"experiment {kind}", lambda: run_experiment(cfg, kind, **options))  # type: ignore[arg-type]


@experiment_app.command("ab")
def experiment_ab(config: Path | None = ConfigOption, set_: list[str] | None = SetOption) -> None:
    """Plan an A/B test (worse vs good model) with the power analysis, run it at that size, repeat it."""
    _experiment(config, set_, "ab")


@experiment_app.command("aa")
def experiment_aa(config: Path | None = ConfigOption, set_: list[str] | None = SetOption) -> None:
    """Repeat A/A tests and report the false positive rate with its interval."""
    _experiment(config, set_, "aa")


@experiment_app.command("interleave")
def experiment_interleave(config: Path | None = ConfigOption, set_: list[str] | None = SetOption) -> None:
    """Find how many users team-draft interleaving needs to detect the A/B test's difference."""
    _experiment(config, set_, "interleave")


@experiment_app.command("ips")
def experiment_ips(config: Path | None = ConfigOption, set_: list[str] | None = SetOption) -> None:
    """Estimate the good model from epsilon-greedy logs (IPS, SNIPS) and compare with serving it."""
    _experiment(config, set_, "ips")


@experiment_app.command("canary")
def experiment_canary(
    config: Path | None = ConfigOption,
    set_: list[str] | None = SetOption,
    model: str | None = typer.Option(
        None,
        "--model",
        help="Simulated: good (default), bad (low CTR) or slow (p99). --live: a ranker alias or version.",
    ),
    approve: bool = typer.Option(True, "--approve/--no-approve", help="Approve the manual 10% stage."),
    live: bool = typer.Option(False, "--live", help="Drive running serving at --url on wall-clock time."),
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="--live: the serving deployment."),
    name: str = typer.Option("canary", "--name", help="--live: the experiment the rollout owns."),
    tick_seconds: float = typer.Option(60.0, "--tick-seconds", min=0.01, help="--live: between checks."),
    hold_seconds: float | None = typer.Option(
        None, "--hold-seconds", min=0.0, help="--live: every stage's hold (default: the spec's hours)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="--live: take over the stored rollout --name at its stage and thresholds."
    ),
) -> None:
    """Roll a canary out on simulated time (or, with --live, on running serving), writing each stage's
    traffic into the experiments file; --live exits 0 at 100% and 1 when rolled back."""
    if resume and not live:
        console.print("[red]error:[/red] --resume takes over a --live rollout: add --live")
        raise typer.Exit(2)
    if live:
        if not model and not resume:
            console.print("[red]error:[/red] --live needs --model <recsys-ranker alias or version>")
            raise typer.Exit(2)
        _live_canary(config, set_, url, model, name, tick_seconds, hold_seconds, approve, resume)
        return
    model = model or "good"
    if model not in ("good", "bad", "slow"):
        console.print(f"[red]error:[/red] --model must be good, bad or slow, got {model!r}")
        raise typer.Exit(2)
    _experiment(config, set_, "canary", canary_model=model, approve_manual=approve)


def _live_canary(
    config: Path | None,
    set_: list[str] | None,
    url: str,
    model: str | None,
    name: str,
    tick_s: float,
    hold_s: float | None,
    approve: bool,
    resume: bool,
) -> None:
    from evaluation.experiments.live_canary import outcome_line, run_live_canary

    cfg = _config(config, set_)
    report = partial(console.print, markup=False, highlight=False)
    ended: list[Any] = []  # the final CanaryState (kept out of `_run`'s summary print)
    try:
        _run(
            "experiment canary --live",
            lambda: ended.append(
                run_live_canary(cfg, url, model, name, tick_s, hold_s, approve, report, resume=resume)
            ),
        )
    except KeyboardInterrupt:
        console.print("interrupted: the experiment keeps its current traffic shares")
        raise typer.Exit(130) from None
    state = ended[0]
    line = outcome_line(state)
    if state.status == "completed":
        console.print(f"[green]{line}[/green]")
        return
    console.print(f"[red]{line}[/red]" if state.status == "rolled_back" else line)
    raise typer.Exit(1 if state.status == "rolled_back" else 3)


@app.command()
def pipeline(
    config: Path | None = ConfigOption, set_: list[str] | None = SetOption, split: str | None = SplitOption
) -> None:
    """Run every offline stage in order: ingest, split, features, train, index, evaluate, drift."""
    from evaluation.evaluate import run_evaluate
    from evaluation.split import run_split
    from monitoring.drift import run_drift
    from recsys.features.stage import run_features
    from recsys.ingest.stage import run_ingest
    from training.index_stage import run_index
    from training.stage import run_train

    cfg = _config(config, _split_override(set_, split))
    started = time.perf_counter()
    version = _run("ingest", lambda: run_ingest(cfg)).dataset_version
    _run("split", lambda: run_split(cfg, version))
    _run("features", lambda: run_features(cfg, version))
    _run("train", lambda: run_train(cfg, version))
    _run("index", lambda: run_index(cfg, version))
    _run("evaluate", lambda: run_evaluate(cfg, version))
    _run("drift", lambda: run_drift(cfg, version))
    console.rule(f"[bold green]pipeline done in {time.perf_counter() - started:.0f} s (dataset {version})")
