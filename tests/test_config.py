from __future__ import annotations

from pathlib import Path

import pytest

from recsys.config import REPO_ROOT, ConfigError, load_config


def test_defaults_validate_and_are_frozen() -> None:
    config = load_config()
    assert config.features.online_store == "sqlite"
    assert config.serve.max_k == 100
    with pytest.raises(ValueError):
        config.two_tower.epochs = 3


def test_yaml_and_overrides_compose(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("two_tower:\n  epochs: 3\nfeatures:\n  online_store: redis\n")
    config = load_config(path, ["two_tower.epochs=7", "ranker.n_candidates=50"])
    assert config.two_tower.epochs == 7
    assert config.features.online_store == "redis"
    assert config.ranker.n_candidates == 50


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("two_tower:\n  epoch: 3\n", [], "two_tower.epoch"),
        ("features:\n  online_store: cassandra\n", [], "features.online_store"),
        ("", ["two_tower.epochs=-1"], "two_tower.epochs"),
        ("", ["serve.http_ingress=nginx"], "serve.http_ingress"),
        ("", ["nonsense"], "section.key=value"),
        ("- a list\n", [], "must be a mapping"),
    ],
)
def test_bad_config_is_one_readable_error(
    tmp_path: Path, text: str, overrides: list[str], message: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, overrides)


def test_relative_state_dir_in_a_file_is_relative_to_the_project(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("state_dir: some/where\n")
    assert load_config(path).state_dir == REPO_ROOT / "some" / "where"


def test_shipped_configs_validate() -> None:
    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        load_config(path)


def test_an_empty_environment_variable_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_STATE_DIR", "")
    monkeypatch.setenv("REDIS_URL", "")
    config = load_config()
    assert config.state_dir == REPO_ROOT / ".state"
    assert config.features.redis_url == "redis://127.0.0.1:6379/0"
