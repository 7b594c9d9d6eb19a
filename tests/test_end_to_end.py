"""The user's path: `recsys pipeline` on a MovieLens sample, then `recsys serve`, called over real HTTP.

One pipeline run and one server back every test here: they are the slowest things in the suite.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pandas as pd
import psutil
import pytest
from commands import RECSYS, SMALL_CONFIG, run_recsys_here

from recsys.config import REPO_ROOT
from recsys.state import StateDir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = SMALL_CONFIG


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Pipeline:
    state: StateDir
    version: str
    events: pd.DataFrame
    catalogue: set[str]


@pytest.fixture(scope="module")
def pipeline(small_pipeline: StateDir) -> Pipeline:
    state = small_pipeline
    version = state.latest_dataset_version()
    events = pd.read_parquet(state.dataset(version) / "interaction_events", columns=["user_id", "item_id"])
    catalogue = set(pd.read_parquet(state.dataset(version) / "items.parquet", columns=["item_id"])["item_id"])
    return Pipeline(state, version, events, catalogue)


@dataclass(frozen=True)
class Served:
    url: str
    port: int
    process: subprocess.Popen[str]


@pytest.fixture(scope="module")
def served(pipeline: Pipeline) -> Iterator[Served]:
    """`recsys serve` with the default HTTP ingress (HAProxy in front of the ingress replica)."""
    port = _free_port()
    env = {**os.environ, "RECSYS_STATE_DIR": str(pipeline.state.root)}
    proc = subprocess.Popen(
        [*RECSYS, "serve", "--config", CONFIG, "--set", f"serve.port={port}"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"recsys serve exited early: {proc.stderr.read()[-4000:] if proc.stderr else ''}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("recsys serve did not become healthy within 240 s")
        yield Served(url, port, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server(served: Served) -> str:
    return served.url


def test_pipeline_writes_every_stage_output(pipeline: Pipeline) -> None:
    manifest = json.loads((pipeline.state.dataset(pipeline.version) / "manifest.json").read_text())
    assert manifest["dataset_version"] == pipeline.version
    metrics = json.loads((pipeline.state.evaluation(pipeline.version) / "metrics.json").read_text())
    assert {"popularity", "retrieval", "retrieval+ranking"} <= set(metrics["models"])
    drift = json.loads((pipeline.state.drift(pipeline.version) / "drift.json").read_text())
    assert isinstance(drift["drift_detected"], bool)
    assert (pipeline.state.drift(pipeline.version) / "report.html").stat().st_size > 10_000


def test_rerunning_the_pipeline_changes_nothing(pipeline: Pipeline) -> None:
    metrics = pipeline.state.evaluation(pipeline.version) / "metrics.json"
    before = metrics.read_bytes()
    proc = run_recsys_here(pipeline.state.root, "train", "--config", CONFIG)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "skipped=True" in proc.stderr.replace(" ", "")
    assert metrics.read_bytes() == before


def test_healthz_names_the_registered_champions(pipeline: Pipeline, server: str) -> None:
    from training.registry import champion_version

    body = httpx.get(f"{server}/healthz", timeout=10).json()
    retrieval = champion_version(pipeline.state, "recsys-two-tower")
    ranking = champion_version(pipeline.state, "recsys-ranker")
    assert retrieval is not None and ranking is not None
    assert body == {
        "status": "ok",
        "model_version": {"retrieval": str(retrieval.version), "ranking": str(ranking.version)},
    }


def test_known_user_gets_k_ranked_unseen_items(pipeline: Pipeline, server: str) -> None:
    user = str(pipeline.events["user_id"].value_counts().index[0])
    response = httpx.post(f"{server}/recommend", json={"user_id": user, "k": 10, "device": "tv"}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["fallback"] is False, body["fallback_reason"]
    assert body["request_id"] and body["model_version"]["ranking"] is not None
    ids = [item["item_id"] for item in body["items"]]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert set(ids) <= pipeline.catalogue
    seen = set(pipeline.events.loc[pipeline.events["user_id"] == user, "item_id"])
    assert not set(ids) & seen
    # Re-ranking (diversity, freshness) may reorder the ranker's scores; positions give the order.
    assert [item["position"] for item in body["items"]] == list(range(1, 11))
    assert all(isinstance(item["score"], float) for item in body["items"])


def test_unknown_user_gets_popularity_fallback(server: str) -> None:
    response = httpx.post(f"{server}/recommend", json={"user_id": "no-such-user", "k": 5}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["fallback"] is True and body["fallback_reason"] == "unknown_user"
    assert len(body["items"]) == 5


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"{not json", "body: invalid JSON"),
        (b'{"user_id": "1", "k": 0}', "k: Input should be greater than or equal to 1"),
        (b'{"user_id": "1", "k": 101}', "k: Input should be less than or equal to 100"),
        (b'{"user_id": "1", "k": 10, "colour": "red"}', "colour: Extra inputs are not permitted"),
        (b'{"k": 10}', "user_id: Field required"),
    ],
)
def test_bad_requests_get_a_readable_422(server: str, payload: bytes, error: str) -> None:
    response = httpx.post(
        f"{server}/recommend", content=payload, headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(error)
    assert "Traceback" not in response.text


def test_evaluate_refuses_champions_trained_on_another_dataset_version(pipeline: Pipeline) -> None:
    """Runs last: it adds a second dataset version to the shared state."""
    other = run_recsys_here(
        pipeline.state.root, "ingest", "--config", CONFIG, "--set", "ingest.sample_users=30"
    )
    assert other.returncode == 0, other.stderr[-4000:]
    try:
        assert pipeline.state.latest_dataset_version() != pipeline.version
        proc = run_recsys_here(pipeline.state.root, "evaluate", "--config", CONFIG)
    finally:
        # The state is shared with later modules: point LATEST back at the trained version.
        (pipeline.state.datasets / "LATEST").write_text(pipeline.version + "\n")
    assert proc.returncode == 1
    assert f"trained on dataset {pipeline.version}" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr


def test_three_horror_films_bring_more_horror_over_http(pipeline: Pipeline, server: str) -> None:
    """The freshness scenario: events posted now change the very next answer, and are stored durably."""
    items = pd.read_parquet(pipeline.state.dataset(pipeline.version) / "items.parquet")
    horror = {
        str(i) for i, cats in zip(items["item_id"], items["categories"], strict=True) if "Horror" in cats
    }
    user = str(pipeline.events["user_id"].value_counts().index[1])
    seen = set(pipeline.events.loc[pipeline.events["user_id"] == user, "item_id"])
    ask = {"user_id": user, "k": 20, "surface": "homepage", "device": "tv"}
    before = httpx.post(f"{server}/recommend", json=ask, timeout=30).json()
    watched = sorted(horror - seen)[:3]
    events = [
        {
            "event_id": f"e2e-horror-{n}",
            "user_id": user,
            "item_id": item,
            "event_type": "view",
            "dwell_time_ms": 5_400_000,
            "session_id": "e2e-session",
            "device_type": "tv",
            "event_ts": "2026-03-01T20:00:00Z",
        }
        for n, item in enumerate(watched)
    ]
    response = httpx.post(f"{server}/events", json={"events": events}, timeout=30)
    assert response.status_code == 200, response.text
    after = httpx.post(f"{server}/recommend", json=ask, timeout=30).json()
    assert after["cached"] is False
    count = sum(item["item_id"] in horror for item in after["items"])
    assert count > sum(item["item_id"] in horror for item in before["items"]), (before, after)
    assert not set(watched) & {item["item_id"] for item in after["items"]}
    stored = pd.read_parquet(pipeline.state.events / "event_date=2026-03-01")
    assert set(watched) <= set(stored["item_id"])
    metrics = httpx.get(f"{server}/metrics", timeout=10).text
    assert 'recsys_events_total{result="accepted"}' in metrics
    assert httpx.get(f"{server}/readyz", timeout=10).json()["status"] == "ready"


def _listener(port: int) -> psutil.Process | None:
    """The process listening on 127.0.0.1:`port`, if any."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid is not None:
            return psutil.Process(conn.pid)
    return None


def test_sigterm_stops_serve_and_the_haproxy_in_front_of_it(served: Served) -> None:
    """Last in this module: it stops the server. HAProxy holds the port while serving, and a SIGTERM
    (what a service manager sends) shuts Serve down with it, leaving the port free."""
    haproxy = _listener(served.port)
    assert haproxy is not None and haproxy.name() == "haproxy", haproxy
    assert httpx.get(f"{served.url}/healthz", timeout=10).status_code == 200
    served.process.terminate()
    assert served.process.wait(timeout=90) == 0
    gone, _ = psutil.wait_procs([haproxy], timeout=30)
    assert gone == [haproxy]
    assert _listener(served.port) is None
