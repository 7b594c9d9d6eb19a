"""The loop's acceptance scenario on the simulator: one simulated world, its log read as it grows.

One simulation covers the whole period, with the drift switched on at ``simulator.drift.at``. The loop
sees it day by day: :func:`log_as_of` copies what had been logged before a date into its own folder (event
partitions before the date, the items published and the users signed up by then), with the manifest of
the full run, so ``ingest.simulated_dir`` pointed at it reads it as that simulation, as of that date.

:func:`run_turns` then runs ``recsys loop`` as a scheduler would, once per date, each time on the log as
of that date, and returns what each turn recorded (``loop.json``). ``tests/test_loop_simulated.py`` and
``benchmarks/loop.py`` both run it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.config import REPO_ROOT, PipelineConfig
from recsys.simulator.stage import run_simulate
from recsys.state import StateDir

EVENTS_DIR = "interaction_events"


def log_as_of(full_run: Path, out_dir: Path, until: datetime) -> Path:
    """What the simulated platform had logged before ``until``, as a simulation folder of its own.

    Event partitions are whole days (``event_date=YYYY-MM-DD``), so ``until`` must be a midnight (UTC);
    late events of earlier days are in their event-time partitions and come along, as in a real log.
    """
    if (until.hour, until.minute, until.second, until.microsecond) != (0, 0, 0, 0):
        raise ValueError(f"log_as_of cuts at whole days; {until.isoformat()} is not a midnight")
    day = until.date().isoformat()
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = 0
    for part in sorted((full_run / EVENTS_DIR).glob("event_date=*")):
        if part.name.removeprefix("event_date=") < day:
            shutil.copytree(part, out_dir / EVENTS_DIR / part.name, dirs_exist_ok=True)
            kept += 1
    if not kept:
        raise ValueError(f"{full_run} holds no events before {day}")
    import pyarrow.dataset as ds

    logged = ds.dataset(out_dir / EVENTS_DIR, format="parquet", partitioning="hive")
    active = pc.unique(logged.to_table(columns=["user_id", "item_id"])["user_id"])
    for table, column in (("items", "published_at"), ("users", "signup_ts")):
        rows = pq.read_table(full_run / f"{table}.parquet")
        # Items arriving (users signing up) later are unknown as of `until`; a null date is a backlog row.
        known = pc.or_kleene(pc.less(rows[column], until), pc.is_null(rows[column]))
        if table == "users":
            # The simulator's bots may click before their signup date; a user with logged events exists.
            known = pc.or_(known, pc.is_in(rows["user_id"], value_set=active))
        pq.write_table(rows.filter(known), out_dir / f"{table}.parquet")
    shutil.copy2(full_run / "manifest.json", out_dir / "manifest.json")
    return out_dir


@dataclass(frozen=True)
class Turn:
    """One `recsys loop` run: the log date it saw, its exit code, and its loop.json."""

    as_of: datetime
    exit_code: int
    record: dict[str, Any]
    seconds: float
    output: str


def _newest_loop_record(state: StateDir, before: set[str]) -> dict[str, Any]:
    runs = sorted((state.monitor / "runs").glob("*/loop.json"))
    fresh = [path for path in runs if path.parent.name not in before]
    if not fresh:
        return {}
    record: dict[str, Any] = json.loads(fresh[-1].read_text())
    return record


def run_turns(
    config_path: Path,
    state_dir: Path,
    dates: Sequence[datetime],
    overrides: Sequence[str] = (),
    timeout_s: int = 900,
    in_process: bool = False,
) -> list[Turn]:
    """Simulate the config's world once, then one ``recsys loop`` per date on the log as of that date.

    Each turn is a ``recsys loop`` process, as a scheduler runs it; with ``in_process`` each turn calls
    :func:`monitoring.loop.run_loop` in this process instead (what the command runs), so the turns share
    one Spark JVM and one set of imports (the test suite's choice: about a minute less per turn).
    """
    import time

    from recsys.config import load_config

    config: PipelineConfig = load_config(config_path, [f"state_dir={state_dir}", *overrides])
    state = StateDir(config.state_dir)
    full_run = state.root / "simulated-full"
    run_simulate(config.simulator, full_run)
    turns = []
    for as_of in dates:
        log = log_as_of(full_run, state.root / f"simulated-as-of-{as_of:%Y%m%d}", as_of)
        before = {p.name for p in (state.monitor / "runs").glob("*")}
        started = time.perf_counter()
        if in_process:
            code, output = _loop_in_process(config_path, [*overrides, f"ingest.simulated_dir={log}"], state)
            turns.append(
                Turn(as_of, code, _newest_loop_record(state, before), time.perf_counter() - started, output)
            )
            continue
        proc = subprocess.run(
            [sys.executable, "-m", "recsys", "loop", "--config", str(config_path)]
            + [arg for item in overrides for arg in ("--set", item)]
            + ["--set", f"ingest.simulated_dir={log}"],
            cwd=REPO_ROOT,
            env={**os.environ, "RECSYS_STATE_DIR": str(state.root)},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        turns.append(
            Turn(
                as_of,
                proc.returncode,
                _newest_loop_record(state, before),
                time.perf_counter() - started,
                proc.stdout + proc.stderr,
            )
        )
    return turns


def _loop_in_process(config_path: Path, overrides: Sequence[str], state: StateDir) -> tuple[int, str]:
    """(exit code as `recsys loop` gives it, what it said) of one loop turn run in this process."""
    import traceback

    from monitoring.loop import run_loop
    from recsys.config import load_config

    lines: list[str] = []
    try:
        config = load_config(config_path, [f"state_dir={state.root}", *overrides])
        record = run_loop(config, say=lambda line: lines.append(str(line)))
    except Exception:  # a turn that fails is reported with its traceback, as the process would
        return 1, "\n".join([*lines, traceback.format_exc()])
    return (4 if record.status == "page" else 0), "\n".join(lines)
