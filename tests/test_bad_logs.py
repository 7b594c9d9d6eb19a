"""A log with every kind of bad row: each is quarantined with a readable reason, every good row lands."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from commands import run_recsys

from recsys.config import IngestConfig, PipelineConfig
from recsys.ingest.stage import run_ingest
from recsys.state import StateDir

MAPPING = """
events:
  event_id: id
  user_id: user
  item_id: item
  event_type: kind
  event_ts: time
  position: pos
"""
GOOD = [
    ("g1", "u1", "i1", "click", "2024-01-01T10:00:00Z", "1"),
    ("g2", "u1", "i2", "like", "2024-01-01T10:05:00Z", "2"),
    ("g3", "u2", "i1", "purchase", "2024-01-02T09:00:00Z", ""),
]
BAD = {
    "b1": ("u2", "i2", "click", "2024-01-02T09:01:00Z", "second"),  # wrong type: position
    "b2": ("u2", "i3", "teleport", "2024-01-02T09:02:00Z", "1"),  # unknown event type
    "b3": ("", "i3", "click", "2024-01-02T09:03:00Z", "1"),  # missing user id
    "b4": ("u3", "", "click", "2024-01-02T09:04:00Z", "1"),  # missing item id
    "b5": ("u3", "i1", "click", "2200-01-01T00:00:00Z", "1"),  # future timestamp
    "b6": ("u3", "i2", "click", "yesterday", "1"),  # unparsable timestamp
}
REASONS = {
    "b1": "not a whole number position",
    "b2": "expect_column_values_to_be_in_set(event_type)",
    "b3": "expect_column_values_to_not_be_null(user_id)",
    "b4": "expect_column_values_to_not_be_null(item_id)",
    "b5": "timestamp in the future",
    "b6": "unparsable timestamp event_ts",
}


def write_log(folder: Path) -> tuple[Path, Path]:
    rows = [*GOOD, *((key, *row) for key, row in BAD.items())]
    log = folder / "log.csv"
    pd.DataFrame(rows, columns=["id", "user", "item", "kind", "time", "pos"]).to_csv(log, index=False)
    mapping = folder / "mapping.yaml"
    mapping.write_text(MAPPING)
    return log, mapping


def test_every_bad_row_is_quarantined_with_its_reason_and_good_rows_land(tmp_path: Path) -> None:
    log, mapping = write_log(tmp_path)
    config = PipelineConfig(state_dir=tmp_path / "state", ingest=IngestConfig(data_dir=tmp_path))
    summary = run_ingest(config, source=log, mapping=mapping)
    events = summary.counts["interaction_events"]
    assert events == {"rows_in": 9, "clean": 3, "quarantined": 6}
    quarantine = pq.read_table(summary.path / "quarantine.parquet").to_pandas()
    quarantine = quarantine[quarantine["table"] == "interaction_events"]
    by_id = {json.loads(r)["event_id" if "event_id" in json.loads(r) else "id"]: why for r, why in zip(
        quarantine["record"], quarantine["reason"], strict=True
    )}  # fmt: skip
    assert set(by_id) == set(BAD)
    for key, reason in REASONS.items():
        assert reason in by_id[key], (key, by_id[key])
    clean = pd.concat(pd.read_parquet(p) for p in (summary.path / "interaction_events").rglob("*.parquet"))
    assert sorted(clean["event_id"]) == ["g1", "g2", "g3"]
    manifest = json.loads((summary.path / "manifest.json").read_text())
    report = manifest["reconciliation"]["interaction_events"]
    assert (
        report["rows_in"] == report["clean"] + report["quarantined"] + report["duplicates"] + report["bots"]
    )


def test_truncated_parquet_is_one_readable_line_and_exit_1(tmp_path: Path) -> None:
    log, mapping = write_log(tmp_path)
    good = tmp_path / "log.parquet"
    pd.read_csv(log, dtype=str).to_parquet(good)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    proc = run_recsys(
        tmp_path / "state", "ingest", "--source", str(broken), "--mapping", str(mapping), timeout=120
    )
    assert proc.returncode == 1
    assert "error in ingest: cannot read parquet log" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not StateDir(tmp_path / "state").datasets.exists()
