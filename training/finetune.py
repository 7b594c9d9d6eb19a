"""Fine-tuning the two-tower model from the champion: its weights carried onto a new vocabulary.

A retrain after drift trains on a new dataset version whose ID vocabularies differ from the champion's:
users and items arrive and leave, and an id's row number moves. Rows are therefore carried by id: the
unknown row 0 and every id known to both vocabularies keep the champion's row, new ids keep their fresh
initialisation, ids no longer in the vocabulary are dropped. The dense MLPs and the history projection
do not depend on the vocabulary and are copied whole. A champion of another architecture (embedding or
hidden width, history input, content width) cannot be a starting point: :func:`architecture_differences`
says how it differs and the caller trains from scratch, recording why.

Only the two-tower model is fine-tuned; the ranker learns from the new retriever's candidates and is
cheap, so it is always retrained in full.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from recsys.config import TwoTowerConfig
from recsys.state import StateDir
from training.two_tower import TwoTowerModel, TwoTowerModelConfig

# State-dict entries that are ID tables, with the vocabulary their rows follow.
ID_TABLES: dict[str, Literal["user", "item"]] = {
    "user_tower.ids.weight": "user",
    "item_tower.ids.weight": "item",
    "history_items.weight": "item",
}
# Model-config fields that only size the ID tables: the vocabularies may differ, the rest may not.
VOCABULARY_FIELDS = ("n_users", "n_items")


def architecture_differences(
    champion: TwoTowerModelConfig, new: TwoTowerModelConfig, ignore: Sequence[str] = VOCABULARY_FIELDS
) -> list[str]:
    """Each model-config field outside ``ignore`` that differs, as ``"name champion -> new"``; empty when
    the champion's weights fit the new model.

    >>> from dataclasses import replace
    >>> a = TwoTowerModelConfig(n_users=5, n_items=9, n_genres=3, embedding_dim=64)
    >>> architecture_differences(a, replace(a, n_users=7, embedding_dim=32))
    ['embedding_dim 64 -> 32']
    """
    old, fresh = asdict(champion), asdict(new)
    return [
        f"{key} {old[key]} -> {fresh[key]}" for key in old if key not in ignore and old[key] != fresh[key]
    ]


def carry_rows(
    old: torch.Tensor, old_ids: Sequence[str], fresh: torch.Tensor, new_ids: Sequence[str]
) -> tuple[torch.Tensor, int]:
    """An ID table for ``new_ids``: ``fresh`` with row 0 and the rows of ids in both vocabularies taken
    from ``old``; returns it and how many ids were carried.

    Args:
        old: (len(old_ids) + 1, dim) the champion's table; id ``old_ids[i]`` is row i + 1.
        old_ids: the champion's vocabulary.
        fresh: (len(new_ids) + 1, dim) the new model's initial table.
        new_ids: the new vocabulary; id ``new_ids[j]`` is row j + 1.
    """
    if old.shape[0] != len(old_ids) + 1 or fresh.shape[0] != len(new_ids) + 1:
        raise ValueError("an ID table has one row per id plus the unknown row 0")
    if old.shape[1:] != fresh.shape[1:]:
        raise ValueError(f"ID tables of width {tuple(old.shape[1:])} and {tuple(fresh.shape[1:])} differ")
    old_row = {item: row + 1 for row, item in enumerate(old_ids)}
    pairs = [(j + 1, old_row[i]) for j, i in enumerate(new_ids) if i in old_row]
    table = fresh.detach().clone()
    targets = torch.as_tensor([0, *(j for j, _ in pairs)], dtype=torch.long)  # (1 + n_carried,)
    sources = torch.as_tensor([0, *(i for _, i in pairs)], dtype=torch.long)
    table[targets] = old.detach().to(table.dtype)[sources]
    return table, len(pairs)


@dataclass(frozen=True)
class WarmStart:
    """How much of the champion a fine-tune starts from."""

    users_carried: int
    users_new: int
    items_carried: int
    items_new: int

    def as_params(self) -> dict[str, int]:
        return {f"finetune_{key}": value for key, value in asdict(self).items()}


def warm_start_state(
    champion: Mapping[str, torch.Tensor],
    champion_users: Sequence[str],
    champion_items: Sequence[str],
    fresh: Mapping[str, torch.Tensor],
    users: Sequence[str],
    items: Sequence[str],
) -> tuple[dict[str, torch.Tensor], WarmStart]:
    """The new model's initial weights: ID tables carried by id (:func:`carry_rows`), every other tensor
    the champion's.

    Raises:
        ValueError: the two state dicts hold other tensors, or a non-ID tensor's shape differs (another
            architecture: check :func:`architecture_differences` first).
    """
    if set(champion) != set(fresh):
        raise ValueError(f"the champion's tensors differ: {sorted(set(champion) ^ set(fresh))}")
    vocabularies = {"user": (champion_users, users), "item": (champion_items, items)}
    out: dict[str, torch.Tensor] = {}
    carried = {"user": 0, "item": 0}
    for name, tensor in fresh.items():
        if name in ID_TABLES:
            old_ids, new_ids = vocabularies[ID_TABLES[name]]
            out[name], carried[ID_TABLES[name]] = carry_rows(champion[name], old_ids, tensor, new_ids)
        elif champion[name].shape == tensor.shape:
            out[name] = champion[name].detach().clone().to(tensor.dtype)
        else:
            raise ValueError(
                f"{name}: the champion's shape {tuple(champion[name].shape)} is not {tuple(tensor.shape)}"
            )
    return out, WarmStart(
        carried["user"], len(users) - carried["user"], carried["item"], len(items) - carried["item"]
    )


def finetune_settings(cfg: TwoTowerConfig) -> TwoTowerConfig:
    """The training settings of a fine-tune: fewer epochs, a smaller learning rate."""
    return cfg.model_copy(
        update={"epochs": cfg.finetune_epochs, "learning_rate": cfg.learning_rate * cfg.finetune_lr_factor}
    )


@dataclass(frozen=True)
class Champion:
    """The champion two-tower model as a fine-tune reads it."""

    version: str
    model_config: TwoTowerModelConfig
    state_dict: dict[str, torch.Tensor]
    user_ids: list[str]
    item_ids: list[str]


@dataclass(frozen=True)
class RetrainPlan:
    """How the two-tower challenger is trained: ``finetune`` from ``champion``, or ``full``; ``refused``
    says why a requested fine-tune trains in full."""

    mode: Literal["full", "finetune"]
    champion: Champion | None = field(default=None, repr=False)
    refused: str = ""

    @property
    def finetuned_from(self) -> str | None:
        return self.champion.version if self.champion is not None else None

    def fall_back(self, reason: str) -> RetrainPlan:
        return RetrainPlan("full", None, reason)

    def tags(self) -> dict[str, str]:
        """The MLflow tags of the challenger's run and registered version."""
        out: dict[str, str] = {"retrain_mode": self.mode}
        if self.finetuned_from is not None:
            out["finetuned_from"] = self.finetuned_from
        if self.refused:
            out["finetune_refused"] = self.refused[:4000]
        return out


def plan_retrain(
    state: StateDir,
    requested: Literal["full", "finetune"],
    expected: TwoTowerModelConfig,
    ignore_content: bool = False,
) -> RetrainPlan:
    """The plan for a requested retrain mode: a fine-tune needs a champion whose architecture is
    ``expected``'s (vocabulary sizes aside, and the content width with ``ignore_content``, for a caller
    that knows it only later); otherwise the plan is ``full`` with the reason."""
    from training.registry import TWO_TOWER_MODEL, champion_version, load_model
    from training.runtime import read_two_tower_weights

    if requested == "full":
        return RetrainPlan("full")
    if champion_version(state, TWO_TOWER_MODEL) is None:
        return RetrainPlan("full", None, "no champion to fine-tune from")
    directory, version = load_model(state, TWO_TOWER_MODEL, "champion")
    weights, model_config, users, items = read_two_tower_weights(directory)
    plan = RetrainPlan("finetune", Champion(version, model_config, weights, users, items))
    return check_architecture(plan, expected, ignore_content)


def check_architecture(
    plan: RetrainPlan, new: TwoTowerModelConfig, ignore_content: bool = False
) -> RetrainPlan:
    """``plan``, or a full retrain when its champion's architecture differs from ``new``'s."""
    if plan.champion is None:
        return plan
    ignore = (*VOCABULARY_FIELDS, "content_dim") if ignore_content else VOCABULARY_FIELDS
    differences = architecture_differences(plan.champion.model_config, new, ignore)
    if not differences:
        return plan
    return plan.fall_back(
        f"champion v{plan.champion.version} has another architecture ({', '.join(differences)})"
    )


def initial_weights(
    plan: RetrainPlan,
    model_config: TwoTowerModelConfig,
    users: Sequence[str],
    items: Sequence[str],
    seed: int,
) -> tuple[dict[str, torch.Tensor], WarmStart] | None:
    """The fine-tune's starting weights (fresh ones seeded as the training workers seed theirs, with the
    champion's carried over), or None for a full retrain."""
    if plan.champion is None:
        return None
    torch.manual_seed(seed)
    fresh = TwoTowerModel(model_config).state_dict()
    champion = plan.champion
    return warm_start_state(champion.state_dict, champion.user_ids, champion.item_ids, fresh, users, items)
