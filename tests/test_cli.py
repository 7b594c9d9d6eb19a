from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from recsys.cli import app
from recsys.config import REPO_ROOT

runner = CliRunner()


def test_help_lists_every_stage() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in ("ingest", "features", "train", "index", "evaluate", "serve", "drift", "pipeline"):
        assert stage in result.output


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("ranker:\n  n_candidate: 3\n")
    result = runner.invoke(app, ["evaluate", "--config", str(path)])
    assert result.exit_code == 2
    assert "invalid config at ranker.n_candidate" in result.output
    assert "Traceback" not in result.output


def test_stage_without_its_inputs_exits_1_readably(tmp_path: Path) -> None:
    result = runner.invoke(app, ["drift", "--set", f"state_dir={tmp_path / 'empty'}"])
    assert result.exit_code == 1
    assert "run `recsys ingest` first" in result.output
    assert "Traceback" not in result.output


def _ingest_shop_log(state_dir: Path) -> None:
    result = runner.invoke(
        app,
        [
            "ingest",
            "--set",
            f"state_dir={state_dir}",
            "--source",
            str(REPO_ROOT / "tests" / "data" / "shop_purchases.csv"),
            "--mapping",
            str(REPO_ROOT / "configs" / "mappings" / "shop_purchases.example.yaml"),
        ],
    )
    assert result.exit_code == 0, result.output


def test_ingest_imports_any_log_with_a_column_mapping(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    _ingest_shop_log(state_dir)
    version = (state_dir / "datasets" / "LATEST").read_text().strip()
    manifest = json.loads((state_dir / "datasets" / version / "manifest.json").read_text())
    assert manifest["source"]["name"] == "log"
    reconciliation = manifest["reconciliation"]["interaction_events"]
    assert (
        reconciliation["rows_in"]
        == reconciliation["clean"]
        + reconciliation["quarantined"]
        + reconciliation["duplicates"]
        + reconciliation["bots"]
    )
    assert (state_dir / "splits" / version / "train.parquet").exists()


def test_source_without_mapping_is_one_readable_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", "--set", f"state_dir={tmp_path}", "--source", "x.csv"])
    assert result.exit_code == 1
    assert "--source and --mapping go together" in result.output


def test_export_split_writes_plain_parquet_and_evaluate_refuses_a_split_without_test_users(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    _ingest_shop_log(state_dir)
    version = (state_dir / "datasets" / "LATEST").read_text().strip()
    train = pd.read_parquet(state_dir / "splits" / version / "train.parquet")

    result = runner.invoke(
        app, ["data", "export-split", "--set", f"state_dir={state_dir}", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 0, result.output
    exported = {
        part: pd.read_parquet(tmp_path / "x" / f"{part}.parquet") for part in ("train", "validation", "test")
    }
    assert list(exported["train"].columns) == ["user_id", "item_id", "timestamp", "event_type"]
    assert len(exported["train"]) == len(train)
    assert sorted(zip(exported["train"]["user_id"], exported["train"]["item_id"], strict=True)) == sorted(
        zip(train["user_id"], train["item_id"], strict=True)
    )

    # Every shop customer has fewer events than the split's minimum, so all of them stay in train.
    result = runner.invoke(app, ["evaluate", "--set", f"state_dir={state_dir}"])
    assert result.exit_code == 1
    assert "has no test users with a positive event" in " ".join(result.output.split())
