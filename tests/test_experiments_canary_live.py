"""The live canary: observations joined from the served log, the event log and /metrics, and the driver
rolling a canary out (or back) on wall-clock time against the serving app."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from servers import free_port, wait_for_port
from test_serving_ingress import TOKEN, AffinityRanker, GenreRetrieval, Reader

from evaluation.experiments.assignment import bucket, load_experiments
from evaluation.experiments.canary import Observation, Stage, Thresholds
from evaluation.experiments.canary_runner import CanaryDriver
from evaluation.experiments.live import (
    ArmTraffic,
    LiveSource,
    VariantHealth,
    arm_counts,
    health_since,
    histogram_quantile,
    live_observation,
    parse_variant_health,
)
from evaluation.experiments.live_canary import admin_publisher, drive, outcome_line
from recsys.state import StateDir
from serving.admin import admin_actions
from serving.api import create_api
from serving.events import EventLog
from serving.experiments import ExperimentWatcher
from serving.metrics import ServingMetrics
from serving.recommender import IngressState, LocalRanking, LocalRetrieval, Recommender
from serving.reranking import RerankConfig
from serving.served import SERVED_FOLDER, ServedLog, ServedTail
from serving.stages import RankingStage, RetrievalStage

pytestmark = [
    pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`"),
    pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument with the TestClient"),
]
INF = math.inf


# --- pure parts, hand-computed ------------------------------------------------------------------


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    buckets = ((0.05, 90.0), (0.1, 98.0), (0.18, 99.0), (0.2, 100.0), (INF, 100.0))
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.18)  # rank 99 ends the 0.18 bucket
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.05 * 50 / 90)  # from 0 in the first
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.05 + 0.05 * (95 - 90) / 8)
    assert histogram_quantile(0.985, buckets) == pytest.approx(0.1 + 0.08 * (98.5 - 98) / 1)
    assert histogram_quantile(0.99, ((0.1, 1.0), (INF, 100.0))) == 0.1  # in +Inf: the last finite bound
    assert math.isnan(histogram_quantile(0.99, ((0.1, 0.0), (INF, 0.0))))


def test_metrics_text_parsed_and_differenced_per_variant() -> None:
    metrics = ServingMetrics()
    for seconds in (0.004, 0.02, 0.3):
        metrics.observe_variants({"canary": "canary", "other": "a"}, seconds, failed=False)
    metrics.observe_variants({"canary": "control"}, 0.06, failed=True)
    before = parse_variant_health(metrics.render().decode(), "canary")
    assert set(before) == {"canary", "control"}
    assert before["canary"].requests == 3.0 and before["canary"].errors == 0.0
    assert dict(before["canary"].buckets)[0.005] == 1.0 and dict(before["canary"].buckets)[0.25] == 2.0
    assert before["control"].errors == 1.0 and before["control"].buckets[-1] == (INF, 1.0)

    metrics.observe_variants({"canary": "canary"}, 0.19, failed=True)
    window = health_since(
        parse_variant_health(metrics.render().decode(), "canary")["canary"], before["canary"]
    )
    assert (window.requests, window.errors) == (1.0, 1.0)
    nonzero = [(bound, n) for bound, n in window.buckets if bound >= 0.18]
    assert nonzero[:2] == [(0.18, 0.0), (0.2, 1.0)]  # 190 ms lands in (0.18, 0.2]
    restarted = VariantHealth(((0.1, 1.0), (INF, 1.0)), 1.0, 0.0)
    assert health_since(restarted, before["canary"]) == restarted  # counts went down: a new replica


def served(
    request_id: str, variant: str, items: list[str], at: str, experiment: str = "canary"
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "served_at": at,
        "experiments": {experiment: variant},
        "item_ids": items,
    }


def test_clicks_join_answers_of_the_window_by_request_id() -> None:
    since = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    rows = [
        served("r1", "canary", ["a", "b", "c"], "2026-03-01T12:00:00+00:00"),
        served("r2", "control", ["a", "d"], "2026-03-01T12:05:00+00:00"),
        served("r3", "control", ["a", "b"], "2026-03-01T11:59:59+00:00"),  # before the stage began
        served("r4", "x", ["a"], "2026-03-01T12:01:00+00:00", experiment="other"),
    ]
    events = pd.DataFrame(
        [
            ("click", "r1", "a"),  # counts
            ("click", "r1", "a"),  # the same click twice counts once
            ("click", "r1", "z"),  # an item r1 did not show
            ("view", "r1", "b"),  # not a click
            ("click", "r2", "d"),  # counts
            ("click", "r3", "a"),  # its answer is outside the window
            ("click", "r4", "a"),  # another experiment's answer
            ("click", None, "a"),  # no request id
        ],
        columns=["event_type", "request_id", "item_id"],
    )
    counts = arm_counts(rows, events.to_dict("list"), "canary", since)
    assert counts == {"canary": ArmTraffic(1, 3, 1), "control": ArmTraffic(1, 2, 1)}


def test_observation_from_counts_and_metrics() -> None:
    arms = {"canary": ArmTraffic(100, 500, 20), "control": ArmTraffic(1900, 9500, 570)}
    health = {
        "canary": VariantHealth(((0.1, 90.0), (0.2, 100.0), (INF, 100.0)), 100.0, 1.0),
        "control": VariantHealth(((0.1, 1900.0), (INF, 1900.0)), 1900.0, 0.0),
    }
    observation = live_observation(arms, health)
    assert observation is not None
    assert observation.p99_ms == pytest.approx(100 + 100 * (99 - 90) / 10)  # rank 99 in (100, 200] ms
    assert replace(observation, p99_ms=0.0) == Observation(
        ctr_canary=0.04,
        ctr_control=0.06,
        impressions_canary=500,
        impressions_control=9500,
        p99_ms=0.0,
        error_rate=0.01,
        requests_canary=100,
    )
    few = {**health, "canary": VariantHealth(((0.1, 98.0), (0.2, 99.0), (INF, 99.0)), 99.0, 0.0)}
    few_observation = live_observation(arms, few)
    assert few_observation is not None and math.isnan(few_observation.p99_ms)  # 99 requests: not judged
    assert live_observation(arms, {"canary": health["canary"]}) is None  # control has no request yet


def test_served_log_is_read_in_complete_lines(tmp_path: Path) -> None:
    from serving.schemas import ModelVersion, RecommendedItem, RecommendResponse

    log = ServedLog(tmp_path / "served")
    answer = RecommendResponse(
        request_id="r1",
        user_id="u1",
        items=[RecommendedItem(item_id="i1", score=1.0, position=1)],
        model_version=ModelVersion(retrieval="7", ranking="3"),
        experiments={"canary": "control"},
    )
    log.record(answer, datetime(2026, 3, 1, 23, 59, tzinfo=UTC))
    tail = ServedTail(tmp_path / "served")
    assert [row["request_id"] for row in tail.read_new()] == ["r1"]
    (path,) = (tmp_path / "served").glob("date=2026-03-01/*.jsonl")
    with path.open("a") as handle:
        handle.write('{"request_id": "half')  # a line still being written
    assert list(tail.read_new()) == []
    with path.open("a") as handle:
        handle.write('"}\n')
    assert [row["request_id"] for row in tail.read_new()] == ["half"]
    log.record(answer.model_copy(update={"request_id": "r2"}), datetime(2026, 3, 2, tzinfo=UTC))
    assert [row["request_id"] for row in tail.read_new(since_day="2026-03-02")] == ["r2"]
    log.close()


# --- the serving app, in process ----------------------------------------------------------------


class BrokenRanker(AffinityRanker):
    version = "5"

    def score(self, user: dict[str, Any], items: pd.DataFrame, retrieval_scores: Any) -> Any:
        raise RuntimeError("broken model")


@dataclass
class App:
    api: FastAPI
    state: StateDir


def serving_app(state: StateDir) -> App:
    """The ingress of `test_serving_ingress` over a state directory: event log, served log, experiments
    file; the admin endpoint loads `challenger` (a good ranker) and `broken` (raises on every request)."""
    reader = Reader()
    rerank = RerankConfig(mmr_lambda=1.0, max_per_category=None, freshness_weight=0.0, no_repeat_responses=0)
    retrieval = RetrievalStage(GenreRetrieval(), reader, session_weight=0.5)
    ranking = LocalRanking(RankingStage(AffinityRanker(), reader, rerank))
    variants = {
        "challenger": RankingStage(AffinityRanker(), reader, rerank),
        "broken": RankingStage(BrokenRanker(), reader, rerank),
    }
    watcher = ExperimentWatcher(state.experiments_file, check_every_s=1.0)
    ingress = IngressState(event_log=EventLog(state.events), experiments=watcher, seed=0)
    recommender = Recommender(LocalRetrieval(retrieval), ranking, 20, 20, rerank=rerank, state=ingress)

    async def reload() -> dict[str, str]:
        return {}

    async def load_model(ref: str) -> str:
        ranking._variants[ref] = variants[ref]
        return variants[ref].version

    actions = admin_actions(watcher, reload, load_model)
    served_log = ServedLog(state.root / SERVED_FOLDER)
    return App(create_api(recommender, 20, TOKEN, actions, served_log), state)


class Users:
    """Traffic: a click on the top item of each control answer, on the top `canary_clicks` items of each
    canary answer. Every other visit is by a user in the canary's first 1% of `experiment` (the canary owns
    the top of [0, 1)), so it has answers to judge at every stage however slow the machine; serving still
    does the bucketing."""

    def __init__(self, client: Any, experiment: str = "canary", canary_clicks: int = 1) -> None:
        self.client = client
        self.experiment = experiment
        self.canary_clicks = canary_clicks
        self._ids = itertools.count()
        early = (f"u{n}" for n in itertools.count() if bucket(f"u{n}", experiment) >= 0.99)
        self._early = list(itertools.islice(early, 20))

    def visit(self, n: int) -> None:
        clicks = []
        for _ in range(n):
            i = next(self._ids)
            user = self._early[i // 2 % 20] if i % 2 else f"u{i % 997}"
            answer = self.client.post("/recommend", json={"user_id": user, "k": 5}).json()
            top = self.canary_clicks if answer["experiments"].get(self.experiment) == "canary" else 1
            clicks += [
                {
                    "event_id": f"click-{i}-{item['item_id']}",
                    "user_id": answer["user_id"],
                    "item_id": item["item_id"],
                    "event_type": "click",
                    "session_id": "s",
                    "request_id": answer["request_id"],
                    "event_ts": datetime.now(UTC).isoformat(),
                }
                for item in answer["items"][:top]
            ]
        if clicks:
            assert self.client.post("/events", json={"events": clicks}).status_code == 200


def test_ingress_counts_latency_and_errors_per_variant(tmp_path: Path) -> None:
    app = serving_app(StateDir(tmp_path / "state"))
    with TestClient(app.api, raise_server_exceptions=False) as client:
        experiments = {"experiments": [{"name": "canary", "variants": [
            {"name": "control", "model": "champion", "traffic": 0.5},
            {"name": "canary", "model": "broken", "traffic": 0.5},
        ]}]}  # fmt: skip
        put = client.put("/admin/experiments", json=experiments, headers={"Authorization": f"Bearer {TOKEN}"})
        assert put.status_code == 200, put.text
        answers = [client.post("/recommend", json={"user_id": f"u{n}", "k": 3}).json() for n in range(40)]
        health = parse_variant_health(client.get("/metrics").text, "canary")
    on_canary = sum(a["experiments"]["canary"] == "canary" for a in answers)
    assert 0 < on_canary < 40
    assert health["canary"].requests == on_canary and health["canary"].errors == on_canary  # ranking fails
    assert health["control"].requests == 40 - on_canary and health["control"].errors == 0
    assert all(
        a["fallback_reason"] == "ranking_failed" for a in answers if a["experiments"]["canary"] == "canary"
    )
    logged = list(ServedTail(app.state.root / SERVED_FOLDER).read_new())
    assert [row["request_id"] for row in logged] == [a["request_id"] for a in answers]


def test_serve_graph_ingress_logs_its_answers(tmp_path: Path) -> None:
    from ray import serve
    from test_serving_api import stages

    from recsys.config import ServeConfig
    from serving.app import build_graph

    state = StateDir(tmp_path / "state")
    graph = build_graph(lambda: stages()[0], lambda: stages()[1], ServeConfig(n_candidates=10), state.root)
    handle = serve.run(graph, _local_testing_mode=True)
    answers = [handle.recommend.remote({"user_id": user, "k": 3}).result() for user in ("u1", "stranger")]
    logged = list(ServedTail(state.root / SERVED_FOLDER).read_new())
    assert [(r["request_id"], r["item_ids"]) for r in logged] == [
        (a["request_id"], [i["item_id"] for i in a["items"]]) for a in answers
    ]
    assert logged[1]["fallback_reason"] == "unknown_user"


def test_driver_rolls_a_failing_canary_back_on_its_error_rate(tmp_path: Path) -> None:
    app = serving_app(StateDir(tmp_path / "state"))
    stages = (Stage(0.5, 0.2), Stage(1.0, 0.0))
    with TestClient(app.api, raise_server_exceptions=False) as client:
        http = cast(httpx.Client, client)  # the TestClient speaks httpx's client API
        users = Users(client)
        driver = CanaryDriver(
            app.state.experiments_file,
            "canary",
            "champion",
            "broken",
            time.time(),
            approver=lambda _: True,
            thresholds=Thresholds(min_requests=10),
            stages=stages,
            publish=admin_publisher(http, TOKEN),
        )
        source = LiveSource(http, app.state.root / SERVED_FOLDER, app.state.events, "canary")
        lines: list[str] = []
        final = drive(driver, source, 0.05, sleep=lambda _: users.visit(30), report=lines.append)
    assert final.status == "rolled_back" and final.traffic == 0.0
    assert outcome_line(final).startswith("canary rolled back at stage 0 (50%): error rate 100.0000% above")
    stored = load_experiments(app.state.experiments_file)["canary"]
    assert stored.rollout is not None and stored.rollout.status == "rolled_back"
    assert stored.rollout.thresholds.min_requests == 10  # frozen with the experiment
    assert [v.traffic for v in stored.variants] == [1.0, 0.0]


# --- the command against a server on a real port ------------------------------------------------


@contextmanager
def running(api: FastAPI) -> Iterator[str]:
    """The app on a free loopback port (uvicorn in a thread), for a command in another process."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_for_port(port), "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def traffic(url: str, experiment: str, canary_clicks: int) -> Iterator[None]:
    """Users visiting and clicking at once (a click lagging its answer would read as a lower CTR), in a
    thread until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=url, timeout=10.0) as client:
            users = Users(client, experiment, canary_clicks)
            while not stop.is_set():
                users.visit(2)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


def recsys(*args: str) -> tuple[int, str]:
    """`recsys ARGS` in this process (a new interpreter costs seconds of imports): exit code, output."""
    from typer.testing import CliRunner

    from recsys.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.integration
def test_live_command_completes_a_good_canary_and_rolls_back_a_bad_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = StateDir(tmp_path / "state")
    monkeypatch.setenv("RECSYS_STATE_DIR", str(state.root))
    live = ["experiment", "canary", "--live", "--model", "challenger", "--tick-seconds", "0.25"]
    live += ["--hold-seconds", "0.6", "-s", "experiments.canary_min_impressions=20"]
    live += ["-s", f"serve.admin_token={TOKEN}"]
    with running(serving_app(state).api) as url:
        # A better canary: a control answer whose click has not been posted yet cannot flip the verdict.
        with traffic(url, "good", canary_clicks=2):
            code, out = recsys(*live, "--url", url, "--name", "good")
        assert code == 0, out[-3000:]
        assert "canary completed: 100% of traffic after 5 stage changes" in out
        rollout = load_experiments(state.experiments_file)["good"].rollout
        assert rollout is not None and rollout.status == "completed" and rollout.stage == 5
        assert [s.hold_s for s in rollout.stages] == [0.6] * 5 + [0.0]
        assert rollout.thresholds.min_impressions == 20

        with traffic(url, "bad", canary_clicks=0):  # the canary's users never click: its CTR is 0
            code, out = recsys(*live, "--url", url, "--name", "bad")
    assert code == 1, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("canary rolled back at stage") and ": CTR 0.0000 below" in last
    experiments = load_experiments(state.experiments_file)
    assert [v.traffic for v in experiments["bad"].variants] == [1.0, 0.0]
    assert experiments["good"].variants[1].traffic == 1.0  # the other rollout is left as it was


def test_live_command_refuses_without_token_server_or_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(*args: str) -> tuple[int, str]:
        code, out = recsys("experiment", "canary", "--live", *args)
        return code, " ".join(out.split())  # rich wraps at the terminal's width

    monkeypatch.setenv("RECSYS_STATE_DIR", str(tmp_path / "state"))
    base = ["--model", "challenger", "--url", f"http://127.0.0.1:{free_port()}"]
    code, out = run(*base, "-s", "serve.admin_token=null")
    assert code == 1 and "no admin token: set RECSYS_ADMIN_TOKEN" in out
    code, out = run(*base, "-s", f"serve.admin_token={TOKEN}")
    assert code == 1 and "does not answer" in out and "Traceback" not in out
    code, out = run()
    assert code == 2 and "--live needs --model" in out
    code, out = recsys("experiment", "canary", "--resume")
    assert code == 2 and "--resume takes over a --live rollout: add --live" in " ".join(out.split())


def test_driver_stops_at_a_manual_stage_without_approval(tmp_path: Path) -> None:
    app = serving_app(StateDir(tmp_path / "state"))
    stages = (Stage(0.5, 0.1), Stage(0.8, 0.1, manual=True), Stage(1.0, 0.0))
    with TestClient(app.api, raise_server_exceptions=False) as client:
        http = cast(httpx.Client, client)
        users = Users(client)
        driver = CanaryDriver(
            app.state.experiments_file,
            "canary",
            "champion",
            "challenger",
            time.time(),
            approver=lambda _: False,
            stages=stages,
            publish=admin_publisher(http, TOKEN),
        )
        source = LiveSource(http, app.state.root / SERVED_FOLDER, app.state.events, "canary")
        final = drive(driver, source, 0.05, sleep=lambda _: users.visit(10), stop_when_awaiting=True)
        assert final.status == "awaiting_approval" and final.traffic == 0.5
        assert outcome_line(final) == "canary waits for approval to go from 50% to 80% (traffic stays)"
        shares = [v.traffic for v in load_experiments(app.state.experiments_file)["canary"].variants]
        assert shares == [0.5, 0.5]
        # The command stopped there; a new one, approving, takes the stored rollout over to the end.
        resumed = CanaryDriver.resume(
            app.state.experiments_file, "canary", time.time(), lambda _: True, admin_publisher(http, TOKEN)
        )
        assert resumed.models == ("champion", "challenger") and resumed.state.stages == stages
        done = drive(resumed, source, 0.05, sleep=lambda _: users.visit(10))
    assert done.status == "completed" and done.traffic == 1.0
    assert [reason for _, _, reason in done.history] == ["start", "resumed", "approved", "auto"]
    assert [v.traffic for v in load_experiments(app.state.experiments_file)["canary"].variants] == [0.0, 1.0]
