from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from recsys.cli import app

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
