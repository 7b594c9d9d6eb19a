"""Shared fixtures: real services, started for real when the environment does not provide them."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from commands import SMALL_CONFIG, run_recsys
from servers import RedisServer, pgserver_url, postgres_server_url, scratch_database

from recsys.state import StateDir

# Ray Train's controller polls its workers every 2 s by default, and each step of a run (workers up,
# training done) waits for the next poll: ~8 s of every small TorchTrainer run here.
RAY_TRAIN_POLL_S = "0.25"


@pytest.fixture(scope="session", autouse=True)
def quick_ray_train_polls() -> Iterator[None]:
    """Ray Train runs of this test session (and the `recsys` commands it starts) poll every 0.25 s,
    unless the environment says otherwise."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
            os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", RAY_TRAIN_POLL_S),
        )
        yield


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL when set; otherwise a real redis-server started on a free port for this test run."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of its own for this test run on a real PostgreSQL: RECSYS_TEST_POSTGRES_URL's server,
    else 127.0.0.1:5432, else one started from the `pgserver` wheel; dropped at the end."""
    server, origin = postgres_server_url()
    with contextlib.ExitStack() as stack:
        if server is None:
            try:
                server = stack.enter_context(pgserver_url(tmp_path_factory.mktemp("pgserver")))
            except ImportError:
                pytest.skip(f"no PostgreSQL: {origin}, and the pgserver package is not installed")
        yield stack.enter_context(scratch_database(server))


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    """An empty state directory for one test."""
    return StateDir(tmp_path / "state")


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """One local Spark session for the whole test run: starting the JVM costs ~30 s."""
    from recsys.config import FeaturesConfig
    from recsys.features.batch import spark_session

    session = spark_session(FeaturesConfig(spark_master="local[2]"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def small_pipeline(tmp_path_factory: pytest.TempPathFactory) -> StateDir:
    """One `recsys pipeline` run on configs/small.yaml, shared by the integration modules (it is the
    slowest thing in the suite). Modules that add state restore what later modules rely on: the latest
    dataset version and the champion aliases."""
    state_dir = tmp_path_factory.mktemp("small-pipeline") / "state"
    proc = run_recsys(state_dir, "pipeline", "--config", SMALL_CONFIG, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return StateDir(state_dir)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt when missing and apt is usable (root), otherwise skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("no chromium and no usable apt-get (needs root) to install it")
    proc = subprocess.run(
        ["apt-get", "install", "-y", "chromium"], capture_output=True, text=True, timeout=900
    )
    found = shutil.which("chromium")
    if proc.returncode != 0 or found is None:
        pytest.skip(f"apt-get install chromium failed: {proc.stderr.strip()[-300:]}")
    return found
