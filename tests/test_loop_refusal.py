"""`recsys loop` on a broken upstream: it alerts, exits 4 and trains nothing.

Two producer faults on a small simulated log: the device column stops being filled in the last days,
and the catalogue renames a genre. Neither is drift; a model trained on them would pass its own
evaluation on the same broken data, so the loop must refuse.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from commands import run_recsys_here as _recsys

from monitoring.loop_scenario import EVENTS_DIR, log_as_of
from recsys.config import REPO_ROOT, load_config
from recsys.simulator.stage import run_simulate
from recsys.state import StateDir
from training.registry import CHALLENGER, CHAMPION, TWO_TOWER_MODEL, alias_version

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CONFIG = REPO_ROOT / "configs" / "loop_simulated.yaml"
SMALL = ["simulator.n_users=400", "simulator.n_items=120", "simulator.drift=null"]


def break_upstream(log: Path, from_day: str) -> None:
    """Empty ``device_type`` in every partition from ``from_day`` on; rename the genre Sci-Fi to SciFi."""
    for part in sorted((log / EVENTS_DIR).glob("event_date=*")):
        if part.name.removeprefix("event_date=") < from_day:
            continue
        for file in part.glob("*.parquet"):
            table = pq.read_table(file)
            column = table.schema.get_field_index("device_type")
            empty = pa.nulls(len(table), table.schema.field(column).type)
            pq.write_table(table.set_column(column, table.schema.field(column), empty), file)
    items = pq.read_table(log / "items.parquet")
    categories = [["SciFi" if c == "Sci-Fi" else c for c in row] for row in items["categories"].to_pylist()]
    column = items.schema.get_field_index("categories")
    field = items.schema.field(column)
    pq.write_table(
        items.set_column(column, field, pa.array(categories, type=field.type)), log / "items.parquet"
    )


def test_the_loop_refuses_a_broken_upstream(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    config = load_config(CONFIG, [f"state_dir={state_dir}", *SMALL])
    full = run_simulate(config.simulator, tmp_path / "full").path
    log = log_as_of(full, tmp_path / "log", datetime(2024, 1, 29, tzinfo=UTC))
    break_upstream(log, "2024-01-25")
    args = [arg for item in [*SMALL, f"ingest.simulated_dir={log}"] for arg in ("--set", item)]

    proc = _recsys(state_dir, "loop", "--config", str(CONFIG), *args)

    assert proc.returncode == 4, proc.stdout[-3000:] + proc.stderr[-3000:]
    state = StateDir(state_dir)
    (record_path,) = (state.monitor / "runs").glob("*/loop.json")
    record = json.loads(record_path.read_text())
    pages = {(a["rule"], a["subject"]) for a in record["alerts"] if a["severity"] == "page"}
    assert ("feature-fill-collapse", "device_type") in pages
    assert ("category-vocabulary-change", "item_categories") in pages
    assert record["decision"].startswith("refused: broken upstream")
    assert "unseen_category_share[item_categories]" in record["decision"]
    assert [s["step"] for s in record["steps"]] == ["ingest", "monitor"]  # no features, no training
    for alias in (CHAMPION, CHALLENGER):
        assert alias_version(state, TWO_TOWER_MODEL, alias) is None
    output = proc.stdout + proc.stderr
    assert "PAGE" in output and "refused" in output and "Traceback" not in output
