"""The promotion gate: may a challenger system replace the champion?

Both systems (two-tower + ranker) answer the same requests: every judged user of the test window, with
point-in-time features (`evaluation.harness`). The challenger passes when all checks pass
(`evaluate.gate` in the config):

- `ndcg`: its NDCG@K (full two-stage system) is at most `ndcg_margin` below the champion's;
- `score_psi`: PSI of its ranker's calibrated probabilities against the champion's on those requests
  is below `max_score_psi`. Calibrated, because two lambdarank models put raw scores on unrelated
  scales (a seed alone moves the raw PSI above 1); probabilities share a scale, so a large PSI means
  the challenger believes something else about the same users (`score_psi_of`). Not judged (NaN,
  passes, `judged` 0) when the champion's probabilities are flat: a ranker whose out-of-fold scores
  did not rise with engagement gets its base rate for every candidate (`fit_platt`), and against a
  point mass any other value, even the base rate re-estimated on new data, is a PSI of about 18;
- `coverage`, `diversity`: catalogue coverage and category diversity of its top-K lists are at least
  `min_coverage` and `min_diversity`;
- `latency`: p99 of the in-process serving path (retrieval -> ranking -> re-ranking with online
  features, `evaluation.replay.serving_latency`) is within `max_p99_ms`.

Every decision, its checks and its reasons are logged as an MLflow run (`gate`), and promotion records
the run id on the promoted versions, forced or not.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from recsys.config import GateConfig, PipelineConfig
from recsys.state import StateDir

GATE_RUN = "gate"


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: list[str]
    checks: dict[str, dict[str, float | bool]]
    mlflow_run_id: str | None


@dataclass(frozen=True)
class Promotion:
    two_tower_version: str
    ranker_version: str
    previous: dict[str, str | None]  # model name -> the champion it replaced
    decision: GateDecision
    forced: bool


def judge(
    champion: Mapping[str, float], challenger: Mapping[str, float], psi: float, p99_ms: float, cfg: GateConfig
) -> tuple[bool, list[str], dict[str, dict[str, float | bool]]]:
    """The checks and the reasons of failing ones, from measured figures (pure).

    Args:
        champion, challenger: metric key -> value, with `ndcg@K`, and for the challenger also
            `coverage@K` and `category_diversity@K`, K = cfg.ndcg_k.

    >>> ok, reasons, _ = judge({"ndcg@10": 0.30}, {"ndcg@10": 0.28, "coverage@10": 0.1,
    ...     "category_diversity@10": 0.8}, 0.05, 50.0, GateConfig(ndcg_margin=0.01))
    >>> ok, reasons
    (False, ['NDCG@10 0.2800 is 0.0200 below the champion 0.3000 (margin 0.0100)'])
    """
    k = cfg.ndcg_k
    ndcg_c, ndcg_x = champion[f"ndcg@{k}"], challenger[f"ndcg@{k}"]
    coverage, diversity = challenger[f"coverage@{k}"], challenger[f"category_diversity@{k}"]
    checks: dict[str, dict[str, float | bool]] = {
        "ndcg": {
            "champion": ndcg_c,
            "challenger": ndcg_x,
            "margin": cfg.ndcg_margin,
            "passed": bool(ndcg_x >= ndcg_c - cfg.ndcg_margin),
        },
        "score_psi": {
            "value": psi,
            "max": cfg.max_score_psi,
            "judged": not np.isnan(psi),
            "passed": bool(np.isnan(psi) or psi < cfg.max_score_psi),
        },
        "coverage": {
            "value": coverage,
            "min": cfg.min_coverage,
            "passed": bool(coverage >= cfg.min_coverage),
        },
        # NaN (no list of two items) fails: diversity cannot be shown.
        "diversity": {
            "value": diversity,
            "min": cfg.min_diversity,
            "passed": bool(diversity >= cfg.min_diversity),
        },
        "latency": {"p99_ms": p99_ms, "max_ms": cfg.max_p99_ms, "passed": bool(p99_ms <= cfg.max_p99_ms)},
    }
    reasons = []
    if not checks["ndcg"]["passed"]:
        reasons.append(
            f"NDCG@{k} {ndcg_x:.4f} is {ndcg_c - ndcg_x:.4f} below the champion {ndcg_c:.4f} "
            f"(margin {cfg.ndcg_margin:.4f})"
        )
    if not checks["score_psi"]["passed"]:
        reasons.append(f"ranker probability PSI {psi:.3f} vs the champion is not below {cfg.max_score_psi}")
    if not checks["coverage"]["passed"]:
        reasons.append(f"coverage@{k} {coverage:.4f} is below the floor {cfg.min_coverage}")
    if not checks["diversity"]["passed"]:
        reasons.append(f"category diversity@{k} {diversity:.4f} is below the floor {cfg.min_diversity}")
    if not checks["latency"]["passed"]:
        reasons.append(f"serving p99 {p99_ms:.1f} ms exceeds the budget of {cfg.max_p99_ms:.0f} ms")
    return not reasons, reasons, checks


def score_psi_of(systems: Mapping[str, Any]) -> float:
    """PSI of the challenger ranker's calibrated probabilities against the champion's.

    Args:
        systems: "champion" and "challenger" -> evaluation.harness.SystemRun on the same requests.

    Raises:
        ValueError: a ranker without calibration (trained before rankers were calibrated).
    """
    for role in ("champion", "challenger"):
        run = systems[role]
        if run.ranked["rank_probability"].isna().any():
            raise ValueError(
                f"the {role} ranker v{run.ranker_version} has no calibration, so its score distribution "
                "cannot be compared: retrain it with `recsys train` (or promote with --force)"
            )
    return probability_psi(
        systems["champion"].ranked["rank_probability"], systems["challenger"].ranked["rank_probability"]
    )


def probability_psi(champion: Any, challenger: Any) -> float:
    """PSI of the challenger's calibrated probabilities against the champion's; NaN (not judged) when
    the champion's are one value, a flat calibration with no distribution to shift from.

    >>> probability_psi([0.0007] * 4, [0.0008] * 4)
    nan
    >>> round(probability_psi([0.1, 0.2, 0.3, 0.4], [0.1, 0.1, 0.1, 0.4]), 2)
    4.46
    """
    from monitoring.shift import score_psi

    reference = np.asarray(champion, dtype=np.float64)
    if np.unique(reference[np.isfinite(reference)]).size <= 1:
        return float("nan")
    return float(score_psi(reference, challenger))


def _decision_key(
    state: StateDir, dataset_version: str | None, challenger: str, champion: str, cfg: GateConfig
) -> dict[str, str]:
    """What a gate decision depends on: both systems' model versions, the data and the thresholds."""
    from training.registry import resolve_system

    key = {"dataset_version": state.resolve_version(dataset_version), "gate_config": _config_json(cfg)}
    for role, ref in (("champion", champion), ("challenger", challenger)):
        tower, ranker = resolve_system(state, ref)
        key |= {f"{role}_two_tower_version": tower, f"{role}_ranker_version": ranker}
    return key


def _config_json(cfg: GateConfig) -> str:
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True)


def recorded_decision(state: StateDir, key: Mapping[str, str]) -> GateDecision | None:
    """The newest logged gate decision taken on exactly ``key`` (versions, data, thresholds), if any."""
    import mlflow

    from training.registry import EXPERIMENT, configure

    client = configure(state)
    runs = client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id],
        filter_string=f"tags.kind = '{GATE_RUN}'",
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    for run in runs:
        if all(run.data.params.get(name) == value for name, value in key.items()):
            recorded = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/gate_decision.json")
            return GateDecision(
                passed=bool(recorded["passed"]),
                reasons=list(recorded["reasons"]),
                checks=recorded["checks"],
                mlflow_run_id=run.info.run_id,
            )
    return None


def run_gate(
    config: PipelineConfig,
    dataset_version: str | None = None,
    challenger: str = "challenger",
    champion: str = "champion",
    reuse: bool = False,
) -> GateDecision:
    """Measure both systems on the test window, judge, and log the decision to MLflow.

    With ``reuse``, a decision already logged for the same model versions, dataset version and
    thresholds is returned instead (`recsys promote` after `recsys gate` does not measure twice).

    Raises:
        MissingStateError: a reference names no registered system.
        ValueError: a system was trained on another dataset version, or the window has no users.
    """
    from rich.console import Console

    from evaluation.beyond_accuracy import list_metrics
    from evaluation.evaluate import item_categories, users_per_item
    from evaluation.harness import load_window, score_system
    from evaluation.metrics import ranking_metrics
    from evaluation.replay import serving_latency

    cfg = config.evaluate.gate
    state = StateDir(config.state_dir)
    key = _decision_key(state, dataset_version, challenger, champion, cfg)
    if reuse and (recorded := recorded_decision(state, key)) is not None:
        Console(stderr=True).log(f"gate: reusing decision {recorded.mlflow_run_id} on the same versions")
        return recorded
    k = cfg.ndcg_k
    n_candidates = max(config.ranker.n_candidates, k)
    with Console(stderr=True).status("gate: loading the test window") as status:
        window = load_window(config, dataset_version, "test")
        systems = {}
        for role, ref in (("champion", champion), ("challenger", challenger)):
            systems[role] = score_system(config, window, ref, n_candidates, progress=status.update)
        categories = item_categories(window.items)
        figures: dict[str, dict[str, float]] = {}
        for role, run in systems.items():
            lists = run.rankings["retrieval+ranking"]
            figures[role] = ranking_metrics(lists, window.relevant, [k]) | list_metrics(
                [lists.get(u, [])[:k] for u in window.users],
                [k],
                sorted(categories),
                categories,
                users_per_item(window.seen),
                len(window.seen),
            )
        psi = score_psi_of(systems)
        status.update(f"gate: timing the serving path of {challenger}")
        timings = serving_latency(config, challenger, window.users[: cfg.latency_requests], k)
    p99 = float(np.percentile(timings, 99))
    passed, reasons, checks = judge(figures["champion"], figures["challenger"], psi, p99, cfg)
    checks["latency"]["p50_ms"] = float(np.percentile(timings, 50))
    checks["latency"]["requests"] = float(len(timings))
    versions = {
        f"{role}_{model}_version": getattr(run, f"{model}_version")
        for role, run in systems.items()
        for model in ("two_tower", "ranker")
    }
    run_id = _log_decision(
        window.state,
        passed,
        reasons,
        checks,
        {
            **versions,
            "challenger": challenger,
            "champion": champion,
            "dataset_version": window.dataset_version,
            "gate_config": key["gate_config"],
        },
    )
    return GateDecision(passed=passed, reasons=reasons, checks=checks, mlflow_run_id=run_id)


def _log_decision(
    state: StateDir,
    passed: bool,
    reasons: list[str],
    checks: Mapping[str, Mapping[str, float | bool]],
    params: Mapping[str, str],
) -> str:
    """One MLflow run per decision: versions as params, every check figure as a metric, the decision
    and its reasons as tags and a JSON artefact."""
    import mlflow

    from training.registry import configure

    configure(state)
    with mlflow.start_run(run_name=GATE_RUN) as run:
        mlflow.log_params(dict(params))
        mlflow.log_metrics(
            {f"{name}_{key}": float(value) for name, check in checks.items() for key, value in check.items()}
        )
        mlflow.set_tags(
            {"kind": GATE_RUN, "passed": str(passed).lower(), "reasons": " | ".join(reasons)[:4000]}
        )
        mlflow.log_dict({"passed": passed, "reasons": reasons, "checks": checks}, "gate_decision.json")
    return str(run.info.run_id)


def promote_system(
    config: PipelineConfig, ref: str, force: bool = False, dataset_version: str | None = None
) -> Promotion:
    """Gate the system `ref` against the champion, then make both of its models champions.

    A failing gate refuses (ValueError with the reasons) unless `force`; a forced promotion is recorded
    on the promoted versions (`promotion` tag) next to the gate run id.
    """
    from training.registry import RANKER_MODEL, TWO_TOWER_MODEL, configure, promote, resolve_system

    state = StateDir(config.state_dir)
    tower, ranker = resolve_system(state, ref)
    decision = run_gate(config, dataset_version, challenger=ref, reuse=True)
    if not decision.passed and not force:
        raise ValueError("the gate refused the promotion: " + "; ".join(decision.reasons))
    client = configure(state)
    note = "gate passed" if decision.passed else "forced past a failing gate: " + "; ".join(decision.reasons)
    previous: dict[str, str | None] = {}
    for model_name, version in ((TWO_TOWER_MODEL, tower), (RANKER_MODEL, ranker)):
        client.set_model_version_tag(model_name, version, "promotion", note[:4000])
        client.set_model_version_tag(model_name, version, "gate_run_id", decision.mlflow_run_id or "")
        previous[model_name] = promote(state, model_name, version)
    return Promotion(tower, ranker, previous, decision, forced=not decision.passed)


def rollback_system(config: PipelineConfig) -> dict[str, str]:
    """Restore the previous champion of both models; returns model name -> restored version."""
    from recsys.state import MissingStateError
    from training.registry import (
        RANKER_MODEL,
        TWO_TOWER_MODEL,
        champion_version,
        previous_champions,
        rollback,
    )

    state = StateDir(config.state_dir)
    names = (TWO_TOWER_MODEL, RANKER_MODEL)
    # Check both first: rolling back one model and not the other would pair a ranker with the wrong retriever.
    for name in names:
        if champion_version(state, name) is None or not previous_champions(state, name):
            raise MissingStateError(f"{name} has no previous champion to roll back to")
    return {name: rollback(state, name) for name in names}


def decision_json(decision: GateDecision) -> str:
    """The decision as one JSON document (for logs and files)."""
    return json.dumps(asdict(decision), indent=2, sort_keys=True, default=float)


def checks_table(checks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One readable line per check: `ndcg: PASS champion=0.03 challenger=0.03 margin=0.01`."""
    lines = []
    for name, check in checks.items():
        figures = " ".join(
            f"{key}={value:.4g}"
            for key, value in check.items()
            if key != "passed" and isinstance(value, float)
        )
        lines.append(f"{name}: {'PASS' if check['passed'] else 'FAIL'} {figures}")
    return lines
