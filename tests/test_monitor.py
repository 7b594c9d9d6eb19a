"""`recsys monitor`: signals on hand-made frames, and whole runs on small synthetic dataset versions."""

from __future__ import annotations

import doctest
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from monitoring import business, calibration, monitor, signals, upstream
from monitoring.alerts import evaluate_rules, load_rules
from monitoring.business import click_through_rate, served_lists
from monitoring.decisions import Schedule, decide_trigger
from monitoring.monitor import parse_duration, run_monitor
from monitoring.runs_index import read_runs
from monitoring.signals import onset
from recsys.config import MonitorConfig, PipelineConfig
from recsys.ingest.snapshot import save_dataset
from recsys.state import StateDir

START = pd.Timestamp("2024-01-01", tz="UTC")


@pytest.mark.parametrize("module", [business, calibration, monitor, signals, upstream])
def test_doctests(module: object) -> None:
    assert doctest.testmod(module).failed == 0  # type: ignore[arg-type]


def test_parse_duration_rejects_unclear_windows() -> None:
    assert parse_duration("90m") == pd.Timedelta(minutes=90)
    with pytest.raises(ValueError, match="must look like"):
        parse_duration("1 week")


def test_ctr_joins_clicks_to_impressions_of_the_same_request() -> None:
    log = pd.DataFrame(
        {
            "event_type": ["impression", "impression", "impression", "click", "click", "click"],
            "request_id": ["r1", "r1", "r2", "r1", "r2", None],
            "item_id": ["a", "b", "a", "b", "b", "a"],  # r2 clicked b, which r2 never showed
            "position": [1, 2, 1, None, None, None],
        }
    )
    assert click_through_rate(log) == pytest.approx(1 / 3)
    assert served_lists(log) == [["a", "b"], ["a"]]


def test_onset_is_the_start_of_the_sustained_shift() -> None:
    reference = pd.Series(["a", "b"] * 50)
    days = pd.date_range(START, periods=4, freq="D")
    # Day 0 and day 2 look like the reference; day 1 is a blip; days 2.. no: day 3 alone is shifted.
    values = ["a", "b"] * 5 + ["a"] * 10 + ["a", "b"] * 5 + ["a"] * 10
    stamps = pd.Series([d for d in days for _ in range(10)])
    began = onset(reference, pd.Series(values), stamps, 0.2, pd.Timedelta(days=1), categorical=True)
    assert began == days[3].to_pydatetime()
    steady = onset(reference, pd.Series(["a", "b"] * 20), stamps, 0.2, pd.Timedelta(days=1), True)
    assert steady is None


def events_frame(
    seed: int, days: int, shift_after: int | None, drop_device_after: int | None
) -> pd.DataFrame:
    """Requests with impressions, a click and a view: devices move to tv from day ``shift_after`` on, and
    the device stops being recorded from day ``drop_device_after`` on."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[object, ...]] = []
    for day in range(days):
        for request in range(150):
            user = f"u{rng.integers(400)}"
            device: str | None = ["mobile", "desktop"][request % 2]
            if shift_after is not None and day >= shift_after:
                device = "tv"
            if drop_device_after is not None and day >= drop_device_after:
                device = None
            at = START + pd.Timedelta(days=day, minutes=int(rng.integers(0, 1440)))
            rid = f"r{day}-{request}"
            shown = rng.choice(20, 5, replace=False)
            for pos, item in enumerate(shown, start=1):
                rows.append((user, f"i{item}", "impression", None, device, "homepage", pos, rid, at))
            clicked = f"i{shown[0]}"
            dwell = int(rng.integers(1000, 9000))
            rows.append((user, clicked, "click", None, device, "homepage", 1, rid, at))
            rows.append(
                (user, clicked, "view", dwell, device, "homepage", 1, rid, at + pd.Timedelta(seconds=5))
            )
    frame = pd.DataFrame(
        rows,
        columns=[
            "user_id",
            "item_id",
            "event_type",
            "dwell_time_ms",
            "device_type",
            "surface",
            "position",
            "request_id",
            "event_ts",
        ],
    )
    frame["event_ts"] = pd.to_datetime(frame["event_ts"], utc=True).astype("datetime64[us, UTC]")
    frame["event_id"] = [f"e{k:06d}" for k in range(len(frame))]
    frame["session_id"] = frame["request_id"]
    frame["server_ts"] = frame["event_ts"]
    frame["dwell_time_ms"] = frame["dwell_time_ms"].astype("Int64")
    frame["position"] = frame["position"].astype("Int32")
    return frame


def make_state(root: Path, events: pd.DataFrame, genres: list[list[str]] | None = None) -> StateDir:
    state = StateDir(root)
    users = events.groupby("user_id")["event_ts"].min().rename("signup_ts").reset_index().assign(region=None)
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(20)]})
    items = items.assign(title=items["item_id"], text=items["item_id"], duration_s=np.nan)
    items["categories"] = genres or [["Drama"] if k % 2 else ["Comedy"] for k in range(20)]
    items["published_at"] = pd.Series(pd.NaT, index=items.index, dtype="datetime64[us, UTC]")
    save_dataset(state, events, items, users, source={"name": "synthetic"})
    return state


def config_for(state: StateDir) -> PipelineConfig:
    return PipelineConfig(state_dir=state.root, monitor=MonitorConfig(window="7d", model_sample_users=0))


def test_a_stationary_log_fires_nothing_and_is_indexed(tmp_path: Path) -> None:
    state = make_state(tmp_path / "state", events_frame(0, 14, None, None))
    run = run_monitor(config_for(state))
    assert run.status == "ok", [a.rule for a in run.alerts]
    assert run.exit_code == 0
    ctr = [o for o in run.observations if o.metric == "ctr" and o.window == "7d"]
    assert ctr and ctr[0].value == pytest.approx(1 / 5)  # one click on five impressions per request
    # No served log with ranker probabilities: calibration is unavailable, not zero.
    assert not [o for o in run.observations if o.metric.startswith("calibration_")]
    assert any(note.startswith("calibration unavailable: no served answer") for note in run.notes)
    verdict = json.loads((run.path / "verdict.json").read_text())
    assert verdict["status"] == "ok" and not verdict["drift_detected"]
    for kind in ("data_drift", "target_drift"):
        assert (run.path / verdict["reports"][kind]["html"]).stat().st_size > 10_000
    index = (state.monitor / "index.html").read_text()
    assert run.run_id in index and f"runs/{run.run_id}/data_drift.html" in index


def test_device_shift_notifies_with_its_onset(tmp_path: Path) -> None:
    state = make_state(tmp_path / "state", events_frame(1, 14, shift_after=10, drop_device_after=None))
    run = run_monitor(config_for(state))
    fired = {(a.rule, a.subject): a for a in run.alerts}
    alert = fired[("feature-psi-shift", "device_type")]
    assert alert.severity == "notify" and alert.value > 5  # every current event is on a device never seen
    assert alert.since == (START + pd.Timedelta(days=10)).to_pydatetime()
    assert alert.runbook_link == "docs/monitoring.md#feature-drift"
    assert run.exit_code == 3 and run.drift_detected
    assert (
        run.reports["data_drift"]["drift_detected"]
        or "device_type" in run.reports["data_drift"]["drifted_columns"]
    )


def test_broken_upstream_pages_and_the_loop_refuses(tmp_path: Path) -> None:
    genres = [["Drama"] if k % 2 else ["Comedie"] for k in range(20)]  # a renamed genre upstream
    state = make_state(tmp_path / "state", events_frame(2, 14, None, drop_device_after=7), genres)
    run = run_monitor(config_for(state))
    pages = {(a.rule, a.subject) for a in run.alerts if a.severity == "page"}
    assert ("category-vocabulary-change", "item_categories") in pages
    assert ("feature-fill-collapse", "device_type") in pages
    assert run.exit_code == 4
    trigger = decide_trigger(run.alerts, run.drift_detected, ["ranker"], Schedule(), None)
    assert trigger.action == "refuse"
    assert any("unseen_category_share[item_categories]" in r for r in trigger.reasons)
    assert read_runs(state.monitor)[0]["status"] == "page"


def test_shipped_rules_all_link_a_runbook_section() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "monitoring.md").read_text()
    for rule in load_rules().rules:
        assert rule.anchor is not None, rule.name
        assert f'<a id="{rule.anchor}"></a>' in doc, rule.anchor


def test_drift_retrains_outside_the_cooldown_and_the_schedule_alone_too() -> None:
    from monitoring.alerts import Alert

    psi = Alert("feature-psi-shift", "notify", "feature_psi", "device_type", 5.0, None, "> 0.2", None, "x")
    schedule = Schedule()
    assert decide_trigger([psi], True, [], schedule, None).action == "retrain"
    cooling = decide_trigger([psi], True, [], schedule, days_since_drift_retrain=0.5)
    assert cooling.action == "skip" and "cooldown" in cooling.reasons[0]
    assert decide_trigger([], False, [], schedule, None).action == "skip"
    due = decide_trigger([], False, ["ranker"], schedule, None)
    assert due.action == "retrain" and due.reasons == ["schedule due: ranker"]
    assert decide_trigger([], False, ["ranker"], schedule, None, follow_schedule=False).action == "skip"


def test_promotion_needs_the_gate_and_the_shadow_comparison() -> None:
    from monitoring.decisions import decide_promotion

    assert not decide_promotion(False, ["ndcg below champion"], 0.3, 0.2).promote
    assert decide_promotion(None, ["gate not installed"], 0.3, 0.2).promote
    kept = decide_promotion(True, [], 0.19, 0.2, margin=0.005)
    assert not kept.promote and kept.reasons[0].startswith("shadow: challenger NDCG 0.19 < champion 0.2")


def test_served_calibration_joins_clicks_to_served_items_of_the_same_request() -> None:
    from monitoring.calibration import served_calibration

    rows: list[dict[str, Any]] = [
        {"request_id": "r1", "item_ids": ["a", "b", "c"], "probabilities": [0.9, 0.3, 0.1]},
        {"request_id": "r2", "item_ids": ["a", "d"], "probabilities": [0.7, 0.2]},
        {"request_id": "r3", "item_ids": ["a"]},  # a line written before probabilities were logged
        {"request_id": "r4", "item_ids": ["e"], "probabilities": None},  # a fallback answer
        {"request_id": "r5", "item_ids": ["e", "f"], "probabilities": [0.5]},  # does not line up
    ]
    events = pd.DataFrame(
        [
            ("click", "r1", "a"),  # counts
            ("click", "r1", "a"),  # the same click twice counts once
            ("click", "r1", "d"),  # d was shown, but under r2
            ("click", "r2", "b"),  # b was shown, but under r1
            ("click", "r2", "z"),  # never shown
            ("view", "r2", "a"),  # not a click
            ("click", "r2", "d"),  # counts
            ("click", "r3", "a"),  # its answer carries no probability
            ("click", None, "c"),  # no request id
        ],
        columns=["event_type", "request_id", "item_id"],
    )
    result = served_calibration(rows, events, n_bins=2)
    assert result is not None
    # Labels a1=1 (0.9), b1=0 (0.3), c1=0 (0.1), a2=0 (0.7), d2=1 (0.2). Bin [0, .5): 0.3, 0.1, 0.2, mean
    # 0.2 against 1/3 clicked; bin [.5, 1]: 0.9, 0.7, mean 0.8 against 1/2: ECE 3/5 * 2/15 + 2/5 * 0.3.
    assert result.ece == pytest.approx(0.2)
    assert result.impressions == 5
    assert result.mean_predicted == pytest.approx(0.44) and result.observed_ctr == pytest.approx(0.4)
    assert result.gap == pytest.approx(0.04)
    assert served_calibration(rows[2:4], events) is None  # nothing with probabilities: unavailable


def test_calibration_is_judged_from_enough_impressions_against_the_reference() -> None:
    from monitoring.calibration import ServedCalibration, calibration_note, calibration_observations

    since = START.to_pydatetime()
    before = ServedCalibration(ece=0.01, mean_predicted=0.1, observed_ctr=0.09, impressions=3000)
    now = ServedCalibration(ece=0.08, mean_predicted=0.15, observed_ctr=0.07, impressions=2500)
    judged = {o.metric: o for o in calibration_observations(before, now, "7d", since, min_impressions=2000)}
    assert judged["calibration_ece"].value == 0.08 and judged["calibration_ece"].baseline == 0.01
    assert judged["calibration_gap"].value == pytest.approx(0.08)
    assert judged["calibration_gap"].baseline == pytest.approx(0.01)
    assert judged["calibration_impressions"].value == 2500 and judged["calibration_ece"].subject == "ranker"
    fired = {a.rule for a in evaluate_rules(load_rules(), judged.values())}
    assert fired == {"calibration-ece", "calibration-over-prediction"}
    few = ServedCalibration(ece=0.3, mean_predicted=0.4, observed_ctr=0.1, impressions=1999)
    assert [o.metric for o in calibration_observations(None, few, "7d", since, 2000)] == [
        "calibration_impressions"
    ]
    assert "1999 impressions" in (calibration_note(few, 2000) or "")
    unjudged_reference = calibration_observations(few, now, "7d", since, 2000)
    assert all(o.baseline is None for o in unjudged_reference)
    assert calibration_observations(None, None, "7d", since) == []
    assert calibration_note(now, 2000) is None


def test_monitor_judges_the_served_rankers_calibration(tmp_path: Path) -> None:
    from serving.schemas import ModelVersion, RecommendedItem, RecommendResponse
    from serving.served import SERVED_FOLDER, ServedLog

    events = events_frame(3, 14, None, None)
    state = make_state(tmp_path / "state", events)
    current_start = events["event_ts"].max() - pd.Timedelta(days=7)
    log = ServedLog(state.root / SERVED_FOLDER)
    shown = events[events["event_type"] == "impression"].sort_values(["request_id", "position"])
    for request_id, group in shown.groupby("request_id"):
        at = group["event_ts"].iloc[0]
        answer = RecommendResponse(
            request_id=str(request_id),
            user_id=str(group["user_id"].iloc[0]),
            items=[
                RecommendedItem(item_id=i, score=1.0, position=n) for n, i in enumerate(group["item_id"], 1)
            ],
            model_version=ModelVersion(retrieval="7", ranking="3"),
        )
        # Calibrated in the reference window (one click in five), over-predicting in the current one.
        answer.set_probabilities([0.5 if at > current_start else 0.2] * len(group))
        log.record(answer, at.to_pydatetime())
    log.close()
    config = PipelineConfig(
        state_dir=state.root,
        monitor=MonitorConfig(window="7d", model_sample_users=0, evidently_reports=False),
    )
    run = run_monitor(config)
    observed = {o.metric: o for o in run.observations if o.metric.startswith("calibration_")}
    assert observed["calibration_impressions"].value == (shown["event_ts"] > current_start).sum()
    assert observed["calibration_ece"].value == pytest.approx(0.3)
    assert observed["calibration_ece"].baseline == pytest.approx(0.0, abs=1e-12)
    assert observed["calibration_observed_ctr"].value == pytest.approx(0.2)
    assert observed["calibration_gap"].value == pytest.approx(0.3)
    fired = {a.rule for a in run.alerts}
    assert {"calibration-ece", "calibration-over-prediction"} <= fired
    assert "calibration-under-prediction" not in fired
    assert not any(note.startswith("calibration") for note in run.notes)


@pytest.mark.integration
def test_the_drift_report_of_a_run_renders_in_a_headless_browser(chromium: str, tmp_path: Path) -> None:
    """Evidently's HTML is a JavaScript app over embedded JSON: only a browser shows whether it draws."""
    import subprocess

    from PIL import Image

    state = make_state(tmp_path / "state", events_frame(1, 14, shift_after=10, drop_device_after=None))
    run = run_monitor(config_for(state))
    page = run.path / json.loads((run.path / "verdict.json").read_text())["reports"]["data_drift"]["html"]
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000"]
    shot = tmp_path / "data_drift.png"
    subprocess.run(
        [*browser, "--hide-scrollbars", "--window-size=1400,2400", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    dom = subprocess.run(
        [*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    # The script drew the summary table's distribution charts: SVG elements the file itself does not hold.
    assert dom.count("<svg") >= page.read_text().count("<svg") + 8
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    assert rgb.shape == (2400, 1400, 3)
    # Evidently draws the reference and current distributions as red bars, one pair per column.
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)
    assert red.mean() > 0.005, "no distribution chart was drawn"
