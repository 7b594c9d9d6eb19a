"""Fine-tuning the two-tower challenger from the champion: rows carried by id, the fingerprint, the
fallback to a full retrain, and one real fine-tune (Ray Train, MLflow) on the shared small pipeline."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from commands import SMALL_CONFIG

from recsys.config import REPO_ROOT, PipelineConfig, load_config
from recsys.state import StateDir
from training.finetune import (
    RetrainPlan,
    WarmStart,
    architecture_differences,
    carry_rows,
    finetune_settings,
    plan_retrain,
    warm_start_state,
)
from training.stage import TrainSummary, training_fingerprint, two_tower_shape
from training.two_tower import TwoTowerModel, TwoTowerModelConfig


def test_carry_rows_keeps_the_unknown_row_and_shared_ids_and_leaves_new_ids_fresh() -> None:
    old = torch.tensor([[9.0, 9.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])  # unknown, a, b, c
    fresh = torch.tensor([[-1.0, -1.0], [-2.0, -2.0], [-3.0, -3.0], [-4.0, -4.0]])  # unknown, c, d, a
    table, carried = carry_rows(old, ["a", "b", "c"], fresh, ["c", "d", "a"])
    assert table.tolist() == [[9.0, 9.0], [3.0, 3.0], [-3.0, -3.0], [1.0, 1.0]]
    assert carried == 2
    assert fresh[1].tolist() == [-2.0, -2.0]  # the fresh table is not written into
    with pytest.raises(ValueError, match="one row per id"):
        carry_rows(old, ["a", "b"], fresh, ["c", "d", "a"])
    with pytest.raises(ValueError, match="width"):
        carry_rows(old, ["a", "b", "c"], torch.zeros(4, 3), ["c", "d", "a"])


def _model(n_users: int, n_items: int, seed: int, **sizes: int) -> TwoTowerModel:
    torch.manual_seed(seed)
    shape = {"embedding_dim": 4, "hidden_dim": 4, **sizes}
    return TwoTowerModel(
        TwoTowerModelConfig(
            n_users=n_users, n_items=n_items, n_genres=3, history_length=2, history_shared=False, **shape
        )
    )


def test_warm_start_maps_every_id_table_by_id_and_copies_the_dense_layers() -> None:
    champion = _model(3, 4, seed=0).state_dict()  # users u1 u2, items i1 i2 i3
    fresh = _model(3, 3, seed=1).state_dict()  # users u2 u3, items i3 i4
    state, warm = warm_start_state(
        champion, ["u1", "u2"], ["i1", "i2", "i3"], fresh, ["u2", "u3"], ["i3", "i4"]
    )
    assert warm == WarmStart(users_carried=1, users_new=1, items_carried=1, items_new=1)
    users, items, history = (
        state["user_tower.ids.weight"],
        state["item_tower.ids.weight"],
        state["history_items.weight"],
    )
    assert torch.equal(users[1], champion["user_tower.ids.weight"][2])  # u2
    assert torch.equal(users[2], fresh["user_tower.ids.weight"][2])  # u3: new
    assert torch.equal(items[0], champion["item_tower.ids.weight"][0])  # the unknown row
    assert torch.equal(items[1], champion["item_tower.ids.weight"][3])  # i3
    assert torch.equal(items[2], fresh["item_tower.ids.weight"][2])  # i4: new
    assert not torch.equal(items[2], champion["item_tower.ids.weight"][2])
    assert torch.equal(history[1], champion["history_items.weight"][3])  # the history table follows items
    for name in ("user_tower.mlp.0.weight", "item_tower.mlp.2.bias", "history_proj.weight"):
        assert torch.equal(state[name], champion[name])
    _model(3, 3, seed=2).load_state_dict(state)  # every tensor present, every shape right


def test_another_architecture_is_named_and_refused() -> None:
    champion, wider, deeper = _model(3, 4, 0), _model(3, 4, 0, embedding_dim=8), _model(3, 4, 0, hidden_dim=8)
    assert architecture_differences(champion.config, wider.config) == ["embedding_dim 4 -> 8"]
    assert architecture_differences(champion.config, _model(5, 9, 0).config) == []  # vocabularies only
    ids = (["u1", "u2"], list("abc"))
    with pytest.raises(
        ValueError, match=r"user_tower.mlp.0.weight: the champion's shape \(4, 4\) is not \(8, 4\)"
    ):
        warm_start_state(champion.state_dict(), *ids, deeper.state_dict(), *ids)
    with pytest.raises(ValueError, match="width"):
        warm_start_state(champion.state_dict(), *ids, wider.state_dict(), *ids)


def test_the_fingerprint_tells_a_finetune_from_a_full_retrain() -> None:
    config = PipelineConfig()
    full = training_fingerprint(config, "v1")
    knobs = config.model_copy(
        update={
            "two_tower": config.two_tower.model_copy(update={"finetune_epochs": 7, "finetune_lr_factor": 0.5})
        }
    )
    # A full retrain's fingerprint is what it was before fine-tuning existed, whatever the fine-tune knobs.
    assert training_fingerprint(config, "v1", None) == full == training_fingerprint(knobs, "v1")
    from_1 = training_fingerprint(config, "v1", "1")
    assert (
        len({full, from_1, training_fingerprint(config, "v1", "2"), training_fingerprint(knobs, "v1", "1")})
        == 4
    )


def test_finetune_settings_and_tags() -> None:
    cfg = finetune_settings(PipelineConfig().two_tower)
    assert cfg.epochs == 3 and cfg.learning_rate == pytest.approx(3e-3 * 0.3)
    assert RetrainPlan("full").tags() == {"retrain_mode": "full"}
    refused = RetrainPlan("full", None, "no champion to fine-tune from")
    assert refused.tags() == {"retrain_mode": "full", "finetune_refused": "no champion to fine-tune from"}


def test_without_a_champion_a_finetune_trains_in_full(state: StateDir) -> None:
    plan = plan_retrain(state, "finetune", two_tower_shape(PipelineConfig(), 0, 0, 0), ignore_content=True)
    assert (plan.mode, plan.finetuned_from, plan.refused) == ("full", None, "no champion to fine-tune from")


@dataclass(frozen=True)
class FineTuned:
    state: StateDir
    config: PipelineConfig
    summary: TrainSummary
    champion: str


@pytest.fixture(scope="module")
def finetuned(small_pipeline: StateDir) -> Iterator[FineTuned]:
    """A challenger fine-tuned from the shared pipeline's champion: one epoch at a learning rate so small
    that its weights stay where the champion's were, and a small ranker (10 candidates, 5 trees, one fold:
    it is only checked to be retrained). The challenger aliases are restored afterwards."""
    from training.registry import (
        CHALLENGER,
        RANKER_MODEL,
        TWO_TOWER_MODEL,
        alias_version,
        configure,
        resolve_version,
        set_alias,
    )
    from training.stage import run_train

    state = small_pipeline
    config = load_config(
        REPO_ROOT / SMALL_CONFIG,
        [
            f"state_dir={state.root}",
            "two_tower.finetune_epochs=1",
            "two_tower.finetune_lr_factor=1e-6",
            "ranker.n_candidates=10",
            "ranker.n_estimators=5",
            "ranker.folds=1",
        ],
    )
    before = {name: alias_version(state, name, CHALLENGER) for name in (TWO_TOWER_MODEL, RANKER_MODEL)}
    champion = resolve_version(state, TWO_TOWER_MODEL, "champion")
    summary = run_train(config, alias=CHALLENGER, retrain="finetune")
    yield FineTuned(state, config, summary, champion)
    for name, entry in before.items():
        if entry is None:
            configure(state).delete_registered_model_alias(name, CHALLENGER)
        else:
            set_alias(state, name, CHALLENGER, str(entry.version))


@pytest.mark.integration
@pytest.mark.slow
def test_a_finetuned_challenger_starts_from_the_champion(finetuned: FineTuned) -> None:
    from training.registry import TWO_TOWER_MODEL, load_model
    from training.runtime import read_two_tower_weights

    summary = finetuned.summary
    assert (summary.alias, summary.skipped, summary.retrain_mode) == ("challenger", False, "finetune")
    assert summary.finetuned_from == finetuned.champion
    champion, config, users, items = read_two_tower_weights(
        load_model(finetuned.state, TWO_TOWER_MODEL, "champion")[0]
    )
    tuned, tuned_config, tuned_users, tuned_items = read_two_tower_weights(
        load_model(finetuned.state, TWO_TOWER_MODEL, summary.two_tower_version)[0]
    )
    assert (tuned_users, tuned_items, tuned_config) == (users, items, config)  # one dataset version
    torch.manual_seed(finetuned.config.two_tower.seed)
    initial = TwoTowerModel(config).state_dict()
    for name in ("item_tower.ids.weight", "user_tower.ids.weight", "item_tower.mlp.0.weight"):
        # Where the champion is, not where a fresh model starts (which the champion has moved away from).
        assert float((tuned[name] - champion[name]).abs().max()) < 1e-5, name
        assert float((champion[name] - initial[name]).abs().max()) > 1e-3, name


@pytest.mark.integration
@pytest.mark.slow
def test_the_finetune_is_recorded_in_mlflow(finetuned: FineTuned) -> None:
    from training.registry import RANKER_MODEL, TWO_TOWER_MODEL, configure, model_version
    from training.stage import FINGERPRINT_TAG

    summary, state = finetuned.summary, finetuned.state
    client = configure(state)
    run = client.get_run(summary.two_tower_run_id).data
    assert run.tags["retrain_mode"] == "finetune" and run.tags["finetuned_from"] == finetuned.champion
    assert int(run.params["finetune_items_carried"]) == int(run.params["n_items"]) > 0
    assert run.params["finetune_items_new"] == "0" and run.params["finetune_users_new"] == "0"
    version = model_version(state, TWO_TOWER_MODEL, summary.two_tower_version)
    assert version.tags["finetuned_from"] == finetuned.champion
    expected = training_fingerprint(finetuned.config, summary.dataset_version, finetuned.champion)
    assert (
        version.tags[FINGERPRINT_TAG]
        == expected
        != training_fingerprint(finetuned.config, summary.dataset_version)
    )
    # The ranker is retrained in full on the fine-tuned retriever's candidates.
    assert "finetuned_from" not in client.get_run(summary.ranker_run_id).data.tags
    assert model_version(state, RANKER_MODEL, summary.ranker_version).tags[FINGERPRINT_TAG] == expected


@pytest.mark.integration
@pytest.mark.slow
def test_a_champion_of_another_architecture_is_refused_with_the_reason(small_pipeline: StateDir) -> None:
    from training.registry import TWO_TOWER_MODEL, resolve_version

    champion = resolve_version(small_pipeline, TWO_TOWER_MODEL, "champion")
    for overrides, refused in [
        (
            ["two_tower.embedding_dim=32"],
            f"champion v{champion} has another architecture (embedding_dim 64 -> 32)",
        ),
        ([], ""),
    ]:
        config = load_config(REPO_ROOT / SMALL_CONFIG, overrides)
        plan = plan_retrain(small_pipeline, "finetune", two_tower_shape(config, 0, 0, 0), ignore_content=True)
        assert plan.refused == refused
        assert (plan.mode, plan.finetuned_from) == (("full", None) if refused else ("finetune", champion))
