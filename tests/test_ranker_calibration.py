"""Ranker calibration: Platt fit, the down-sampling correction, artefacts, and why the gate's PSI needs it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from factories import SMALL_RANKER as CFG
from factories import planted_ranker_rows as _planted

from evaluation.document import calibration_summary
from evaluation.report import reliability_figure
from monitoring.shift import score_psi
from recsys.config import RankerConfig
from training.calibration import CALIBRATION_FILE, CalibrationError, PlattCalibrator, fit_platt, logistic
from training.ranker import train_ranker
from training.runtime import ArtifactError, RankingModel, write_ranker_artifacts


def _logistic_sample(n: int, slope: float, intercept: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=n)
    labels = (rng.random(n) < logistic(slope * scores + intercept)).astype(np.float32)
    return scores, labels


def test_platt_recovers_the_logistic_that_made_the_labels() -> None:
    scores, labels = _logistic_sample(40_000, slope=1.5, intercept=-2.0)
    calibrator = fit_platt(scores, labels)
    assert calibrator.slope == pytest.approx(1.5, abs=0.08)
    assert calibrator.intercept == pytest.approx(-2.0, abs=0.08)
    assert calibrator.n_rows == 40_000 and calibrator.positive_rate == pytest.approx(labels.mean())


def test_correction_by_hand() -> None:
    # sigmoid(0) = 0.5 with negatives kept at 1/4: odds 1 -> 1/4, so p = 0.25 / 1.25 = 0.2.
    assert PlattCalibrator(0.0, 0.0, negative_rate=0.25).probabilities([0.0]).tolist() == pytest.approx([0.2])
    # ln 3 gives 0.75 (odds 3); kept at 1/3 the odds are 1: 0.5. Rate 1 is the identity.
    assert PlattCalibrator(1.0, 0.0, negative_rate=1 / 3).probabilities([math.log(3)])[0] == pytest.approx(
        0.5
    )
    assert PlattCalibrator(1.0, 0.0).probabilities([math.log(3)])[0] == pytest.approx(0.75)


def test_correction_undoes_negative_down_sampling() -> None:
    """Fitted on rows whose negatives were kept at 20%, corrected probabilities match the full data."""
    scores, labels = _logistic_sample(60_000, slope=1.0, intercept=-3.0, seed=1)
    keep = (labels == 1) | (np.random.default_rng(2).random(len(labels)) < 0.2)
    corrected = fit_platt(scores[keep], labels[keep], negative_rate=0.2)
    uncorrected = fit_platt(scores[keep], labels[keep])
    full_rate = float(labels.mean())
    assert corrected.probabilities(scores).mean() == pytest.approx(full_rate, rel=0.08)
    assert uncorrected.probabilities(scores).mean() > 2.5 * full_rate  # the bias the correction removes
    reference = fit_platt(scores, labels).probabilities(scores)
    assert np.abs(corrected.probabilities(scores) - reference).max() < 0.03


def test_one_class_sample_gets_its_rate_and_bad_input_is_refused() -> None:
    flat = fit_platt([0.1, 0.5, 0.9], [0, 0, 0])
    assert flat.slope == 0.0 and flat.probabilities([5.0])[0] == pytest.approx(1e-6)
    falling = fit_platt([0.1, 0.2, 0.3, 0.4], [1, 1, 0, 0])  # higher score, fewer engagements
    assert falling.slope == 0.0 and falling.probabilities([0.0, 9.0]).tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(CalibrationError, match="3 scores for 2 labels"):
        fit_platt([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(CalibrationError, match="0 or 1"):
        fit_platt([0.1, 0.2], [0, 2])
    with pytest.raises(CalibrationError, match="no rows"):
        fit_platt([], [])
    with pytest.raises(CalibrationError, match="negative_rate"):
        fit_platt([0.1, 0.2], [0, 1], negative_rate=0.0)
    with pytest.raises(CalibrationError, match="method"):
        PlattCalibrator.from_json({"method": "isotonic"})


def test_trained_ranker_is_calibrated_on_held_out_rows_and_keeps_its_order() -> None:
    features, labels, groups = _planted(n_users=200)
    result = train_ranker(features, labels, groups, CFG)
    m = result.metrics
    assert m["ranker_calibration_in_sample"] == 0.0
    assert m["ranker_calibration_rows"] == 40 * 20  # the 40 held-out users, every candidate
    assert m["ranker_ece_calibrated"] < 0.05 < m["ranker_ece_raw"]
    raw = result.booster.predict(features)
    probabilities = result.calibrator.probabilities(raw)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    assert (np.diff(probabilities[np.argsort(raw)]) >= 0).all()  # monotone: the ranking is unchanged
    assert probabilities.mean() == pytest.approx(labels.mean(), abs=0.02)


def test_users_without_positive_join_the_calibration_rows_in_the_holdout_share() -> None:
    features, labels, groups = _planted(n_users=50)
    labels[: 10 * 20] = 0  # ten users without a positive: two of them (20%) are calibration rows
    m = train_ranker(features, labels, groups, CFG).metrics
    assert m["ranker_holdout_users"] == 8
    assert m["ranker_calibration_rows"] == (8 + 2) * 20


def test_tiny_sample_is_calibrated_in_sample() -> None:
    features, labels, groups = _planted(n_users=3)
    labels[20:] = 0  # only the first user has positives: no holdout
    m = train_ranker(features, labels, groups, CFG).metrics
    assert m["ranker_calibration_in_sample"] == 1.0 and m["ranker_calibration_rows"] == 60


def test_probability_psi_passes_a_reseeded_ranker_and_fails_a_broken_one() -> None:
    """What the gate compares: a seed-only retrain keeps its probabilities, shuffled labels do not,
    while raw lambdarank scores of the two honest rankers already sit on different scales."""
    features, labels, groups = _planted(n_users=200)
    requests, _, _ = _planted(n_users=100, seed=7)
    champion = train_ranker(features, labels, groups, CFG)
    reseeded = train_ranker(features, labels, groups, RankerConfig(**{**CFG.model_dump(), "seed": 1}))
    shuffled = np.random.default_rng(3).permutation(labels)
    broken = train_ranker(features, shuffled, groups, CFG)
    raw = {name: r.booster.predict(requests) for name, r in (("c", champion), ("s", reseeded), ("b", broken))}
    prob = {
        "c": champion.calibrator.probabilities(raw["c"]),
        "s": reseeded.calibrator.probabilities(raw["s"]),
        "b": broken.calibrator.probabilities(raw["b"]),
    }
    assert score_psi(raw["c"], raw["s"]) > 0.2  # the old check failed the honest retrain
    assert score_psi(prob["c"], prob["s"]) < 0.1
    assert score_psi(prob["c"], prob["b"]) > 0.2


def _booster_and_calibrator(tmp_path: Path) -> tuple[Path, PlattCalibrator]:
    features, labels, groups = _planted(n_users=30)
    result = train_ranker(features, labels, groups, CFG)
    write_ranker_artifacts(tmp_path / "rk", result.booster, result.calibrator)
    return tmp_path / "rk", result.calibrator


def test_artefacts_round_trip_the_calibration(tmp_path: Path) -> None:
    directory, calibrator = _booster_and_calibrator(tmp_path)
    model = RankingModel.load(directory, "4")
    matrix, _, _ = _planted(n_users=2, seed=5)
    raw, probabilities = model.predict_matrix_with_probabilities(matrix)
    assert model.calibrated and model.calibrator == calibrator
    np.testing.assert_allclose(probabilities, calibrator.probabilities(raw))
    assert json.loads((directory / CALIBRATION_FILE).read_text())["method"] == "platt"


def test_old_artefacts_without_calibration_rank_but_refuse_probabilities(tmp_path: Path) -> None:
    directory, _ = _booster_and_calibrator(tmp_path)
    (directory / CALIBRATION_FILE).unlink()
    model = RankingModel.load(directory, "2")
    matrix, _, _ = _planted(n_users=1, seed=5)
    assert not model.calibrated and np.isfinite(model.predict_matrix(matrix)).all()
    with pytest.raises(ArtifactError, match=r"ranker v2 has no calibration\.json .*recsys train"):
        model.probabilities(model.predict_matrix(matrix))


def test_corrupt_calibration_is_a_load_error(tmp_path: Path) -> None:
    directory, _ = _booster_and_calibrator(tmp_path)
    (directory / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(ArtifactError, match="calibration unreadable"):
        RankingModel.load(directory, "1")
    (directory / CALIBRATION_FILE).write_text(json.dumps({"method": "platt", "slope": 1.0}))
    with pytest.raises(ArtifactError, match="malformed"):
        RankingModel.load(directory, "1")


def test_evaluation_reads_calibrated_probabilities_and_keeps_the_raw_line() -> None:
    labels, raw = np.array([0, 1, 1]), np.array([-1.0, 0.0, 3.0])
    summary = calibration_summary(labels, raw, np.array([0.1, 0.9, 0.9]))
    # bins: 0.1 holds label 0 (gap 0.1), 0.9 holds two 1s (gap 0.1): ECE 0.1
    assert summary["calibrated"] and summary["ece"] == pytest.approx(0.1)
    # raw through a logistic, one per bin: 0.269 (label 0), 0.5 (1), 0.953 (1)
    assert summary["raw_ece"] == pytest.approx((0.2689414 + 0.5 + (1 - 0.9525741)) / 3, abs=1e-6)
    assert summary["raw_curve"]["count"][2] == 1
    uncalibrated = calibration_summary(labels, raw, np.full(3, np.nan))
    assert not uncalibrated["calibrated"] and uncalibrated["ece"] == summary["raw_ece"]
    assert reliability_figure(summary["curve"], summary["raw_curve"]).startswith(b"\x89PNG")
