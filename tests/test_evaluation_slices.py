"""Slices, the metrics document's schema, the gate's judgement and the HTML report: hand-computed cases."""

from __future__ import annotations

import base64
import math

import numpy as np
import pandas as pd
import pytest

from evaluation.document import DOCUMENT_KEYS, build_document, calibration_summary, curve_ks
from evaluation.gate import judge, probability_psi
from evaluation.report import popularity_percentiles, render_html, slices_figure
from evaluation.slices import context_slices, item_slices, restrict_relevant, slice_metrics, user_slices
from monitoring.shift import score_psi
from recsys.config import GateConfig


def test_user_slices_cold_start_and_power_users() -> None:
    counts = {"a": 2, "b": 4, "c": 5, "d": 30, "e": 100}
    slices = user_slices(counts, ["a", "b", "c", "d", "e", "new"], cold_start_max=5, power_quantile=0.8)
    assert slices["cold_start"] == {"a", "b", "new"}  # fewer than 5 events; "new" has none
    # 80th percentile of [2, 4, 5, 30, 100, 0] is 30: d and e
    assert slices["power"] == {"d", "e"}


def test_context_slices_take_each_users_most_used_value_and_skip_empty_columns() -> None:
    window = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "b", "c"],
            "device_type": ["tv", "mobile", "tv", "mobile", None],
            "surface": [None] * 5,
        }
    )
    assert context_slices(window, {"a", "b", "c"}) == {"device=mobile": {"b"}, "device=tv": {"a"}}


def test_item_slice_metrics_judge_only_the_slice_items() -> None:
    rankings = {"m": {"u1": ["pop", "tail"], "u2": ["tail2", "pop"]}}
    relevant = {"u1": {"pop", "tail"}, "u2": {"pop"}}
    head = item_slices({"pop": 8.0, "tail": 1.0, "tail2": 1.0}, head_share=0.5)["head"]
    assert head == {"pop"}
    long_tail = restrict_relevant(relevant, drop=head)
    assert long_tail == {"u1": {"tail"}}  # u2 has no long-tail positive: left out
    out = slice_metrics(
        rankings, relevant, {"cold_start": {"u2"}, "power": set()}, {"long_tail": long_tail}, [1, 2]
    )
    assert out["long_tail"]["n_users"] == 1
    assert out["long_tail"]["models"]["m"]["recall@1"] == 0.0  # type: ignore[index]
    assert out["long_tail"]["models"]["m"]["recall@2"] == 1.0  # type: ignore[index]
    assert out["long_tail"]["models"]["m"]["ndcg@2"] == pytest.approx(1 / math.log2(3))  # type: ignore[index]
    assert out["cold_start"]["models"]["m"]["mrr@2"] == 0.5  # type: ignore[index]
    assert out["power"] == {"n_users": 0, "models": {}}


def test_metrics_document_has_the_pinned_schema() -> None:
    document = build_document(
        dataset_version="v",
        split="test",
        model_ref="champion",
        model_versions={"retrieval": "1", "ranking": "1"},
        n_users=3,
        ks=[10, 50],
        n_candidates=50,
        seconds=1.23456,
        models={"popularity": {"recall@10": 0.5}},
        curves={"popularity": {"recall@1": 0.1}},
        slices={},
        calibration=calibration_summary(np.array([0, 1, 1]), np.array([-1.0, 0.0, 3.0])),
        replay=None,
        report="report.html",
    )
    assert DOCUMENT_KEYS == (
        "schema_version", "dataset_version", "split", "model_ref", "model_versions", "n_users",
        "ks", "curve_ks", "n_candidates", "seconds", "models", "curves", "slices", "calibration",
        "replay", "comparisons", "report",
    )  # fmt: skip
    assert tuple(document) == DOCUMENT_KEYS
    assert document["schema_version"] == 1 and document["curve_ks"] == [1, 5, 10, 20, 50]
    assert document["seconds"] == 1.235
    calibration_keys = {"ece", "n", "positive_rate", "curve", "calibrated", "raw_ece", "raw_curve"}
    assert set(document["calibration"]) == calibration_keys
    # one example per bin: logistic(-1)=0.269 (label 0), logistic(0)=0.5 (1), logistic(3)=0.953 (1)
    expected = (0.2689414 + (1 - 0.5) + (1 - 0.9525741)) / 3
    assert document["calibration"]["ece"] == pytest.approx(expected, abs=1e-6)
    assert curve_ks([100]) == [1, 5, 10, 20, 50, 100]


def test_gate_judge_passes_within_margins_and_names_each_failure() -> None:
    cfg = GateConfig(ndcg_k=10, ndcg_margin=0.02, max_score_psi=0.2, min_coverage=0.1, min_diversity=0.5)
    good = {"ndcg@10": 0.29, "coverage@10": 0.2, "category_diversity@10": 0.6}
    passed, reasons, checks = judge({"ndcg@10": 0.30}, good, 0.1, 100.0, cfg)
    assert passed and reasons == [] and all(c["passed"] for c in checks.values())
    bad = {"ndcg@10": 0.25, "coverage@10": 0.05, "category_diversity@10": float("nan")}
    passed, reasons, checks = judge({"ndcg@10": 0.30}, bad, 0.2, 171.0, cfg)
    assert not passed
    assert [name for name, c in checks.items() if not c["passed"]] == [
        "ndcg", "score_psi", "coverage", "diversity", "latency"
    ]  # fmt: skip
    assert reasons[0] == "NDCG@10 0.2500 is 0.0500 below the champion 0.3000 (margin 0.0200)"
    assert "PSI 0.200" in reasons[1] and "171.0 ms" in reasons[4]


def test_gate_does_not_judge_a_shift_from_a_flat_champion() -> None:
    cfg = GateConfig(ndcg_k=10, max_score_psi=0.2)
    challenger = {"ndcg@10": 0.3, "coverage@10": 0.2, "category_diversity@10": 0.6}
    # The champion's Platt fit was flat (its base rate for every candidate); the challenger's base rate,
    # re-estimated on newer data, differs by 6%: against the point mass, PSI says ~18.
    assert score_psi([0.000741] * 50, [0.000787] * 50) > 18
    psi = probability_psi([0.000741] * 50, [0.000787] * 50)
    passed, reasons, checks = judge({"ndcg@10": 0.2}, challenger, psi, 10.0, cfg)
    assert passed and reasons == []
    assert checks["score_psi"]["judged"] is False and checks["score_psi"]["passed"] is True
    # A flat challenger against a champion that spreads its probabilities is judged, and refused.
    spread = np.linspace(0.001, 0.2, 50)
    psi = probability_psi(spread, [0.000787] * 50)
    passed, reasons, checks = judge({"ndcg@10": 0.2}, challenger, psi, 10.0, cfg)
    assert checks["score_psi"]["judged"] is True and not passed and "PSI" in reasons[0]


def test_popularity_percentiles_rank_the_catalogue() -> None:
    assert popularity_percentiles({"a": 3, "b": 3, "c": 1}, ["a", "b", "c", "d"]) == {
        "a": pytest.approx(100 * 2.5 / 3),
        "b": pytest.approx(100 * 2.5 / 3),
        "c": pytest.approx(100 / 3),
        "d": 0.0,
    }


def test_report_embeds_its_figures_and_needs_no_outside_file() -> None:
    slices = {"cold_start": {"n_users": 2, "models": {"m": {"ndcg@10": 0.4}}}}
    png = slices_figure(slices, "ndcg@10")
    assert png.startswith(b"\x89PNG")
    document = {
        "ks": [10],
        "model_ref": "champion",
        "split": "test",
        "dataset_version": "v",
        "model_versions": {"retrieval": "1"},
        "n_users": 2,
        "calibration": {"ece": 0.1, "n": 5},
        "models": {"m": {"ndcg@10": 0.4}},
    }
    page = render_html(document, {"Slices": png})
    assert base64.b64encode(png).decode() in page
    assert "<td>0.4000</td>" in page and "src='http" not in page and "<script" not in page
