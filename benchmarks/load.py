"""Load test of the serving API over real HTTP, from this process against a server in another, beside a
trivial Ray Serve echo app measured in the same run as the floor.

    python benchmarks/load.py --config configs/default.yaml --rates 10 25 50 100 --concurrency 1 8 32

For each target (the echo app, then `recsys serve`), both started here as subprocesses:
- open loop: requests sent on a fixed schedule at each rate for `--duration` seconds; latency is counted
  from the scheduled send time, so a server that falls behind is charged for the queue it builds;
- closed loop: `c` clients each sending the next request as soon as the last is answered.
Requests are `POST /recommend` for users of the training split, with a fresh exclusion each time so that
the prediction cache never answers. Results: p50/p99, achieved throughput, errors, fallbacks, and the
highest offered rate whose p99 stayed under `--p99-budget-ms` (200 ms by default).
Writes `benchmarks/results/load.json` and `.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pandas as pd
from saving import run_meta, save

from recsys.config import load_config
from recsys.state import StateDir

HERE = Path(__file__).parent
TIMEOUT_S = 10.0


@dataclass
class Level:
    target: str
    mode: str  # "rate" (open loop) or "concurrency" (closed loop)
    level: int
    sent: int
    ok: int
    errors: int
    fallbacks: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def throughput(self) -> float:
        return round(self.ok / self.seconds, 1) if self.seconds else 0.0


@dataclass
class _Outcome:
    ms: float
    ok: bool
    fallback: bool


BodyMaker = Callable[[int], dict[str, Any]]


def fresh_requests(state: StateDir, seed: int = 0) -> BodyMaker:
    """`POST /recommend` bodies (k = 10) for users of the state's training split drawn at random, each
    with an exclusion of its own so that the prediction cache never answers."""
    train = pd.read_parquet(
        state.splits(state.latest_dataset_version()) / "train.parquet", columns=["user_id"]
    )
    users = sorted(train["user_id"].astype(str).unique())
    rng = np.random.default_rng(seed)

    def make(i: int) -> dict[str, Any]:
        user = users[int(rng.integers(len(users)))]
        return {"user_id": user, "k": 10, "exclude_item_ids": [f"nonce-{i}-{time.time_ns()}"]}

    return make


def free_port() -> int:
    """A port nothing listens on now: servers started by a benchmark never meet a stale one."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _send(session: aiohttp.ClientSession, url: str, body: dict[str, Any], started: float) -> _Outcome:
    try:
        async with session.post(url, json=body) as response:
            payload = await response.json(content_type=None) if response.status == 200 else {}
            ok = response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        ok, payload = False, {}
    return _Outcome((time.perf_counter() - started) * 1000, ok, bool(payload.get("fallback")))


def level_of(target: str, mode: str, level: int, outcomes: list[_Outcome], seconds: float) -> Level:
    """One level's counts and latency percentiles (of the answered requests) from its outcomes."""
    ms = np.array([o.ms for o in outcomes if o.ok]) if any(o.ok for o in outcomes) else np.array([np.nan])
    return Level(
        target,
        mode,
        level,
        sent=len(outcomes),
        ok=sum(o.ok for o in outcomes),
        errors=sum(not o.ok for o in outcomes),
        fallbacks=sum(o.fallback for o in outcomes),
        seconds=round(seconds, 2),
        p50_ms=round(float(np.median(ms)), 2),
        p99_ms=round(float(np.percentile(ms, 99)), 2),
        max_ms=round(float(np.max(ms)), 2),
    )


async def open_loop(url: str, make: BodyMaker, rate: int, duration_s: float) -> tuple[list[_Outcome], float]:
    """Send `rate` requests a second on a fixed schedule; latency counts from each scheduled time."""
    n = max(1, int(rate * duration_s))
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        start = time.perf_counter()

        async def one(i: int) -> _Outcome:
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            return await _send(session, url, make(i), scheduled)

        outcomes = await asyncio.gather(*(one(i) for i in range(n)))
        return list(outcomes), time.perf_counter() - start


async def closed_loop(
    url: str, make: BodyMaker, clients: int, duration_s: float
) -> tuple[list[_Outcome], float]:
    """`clients` senders, each sending its next request when the last one is answered."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    outcomes: list[_Outcome] = []
    counter = iter(range(10**9))
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()
        deadline = start + duration_s

        async def client() -> None:
            while time.perf_counter() < deadline:
                outcomes.append(await _send(session, url, make(next(counter)), time.perf_counter()))

        await asyncio.gather(*(client() for _ in range(clients)))
        return outcomes, time.perf_counter() - start


def wait_healthy(base: str, process: subprocess.Popen[bytes], timeout_s: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before it was healthy")
        try:
            if httpx.get(f"{base}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base}/healthz did not answer within {timeout_s:.0f} s")


@contextmanager
def running(command: list[str], base: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server subprocess, healthy on entry, interrupted (then killed if it lingers) on exit.

    The interrupt goes to the server alone: it shuts Serve down, and HAProxy with it. Sent to its whole
    process group, it also stopped the Ray workers at once, before they could stop the HAProxy they
    started (which runs in a session of its own), and that HAProxy kept its ports. Whatever of the group
    is left after the server exits is killed.
    """
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(base, process)
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def measure(
    target: str, base: str, make: BodyMaker, rates: list[int], clients: list[int], duration_s: float
) -> list[Level]:
    url = f"{base}/recommend"
    asyncio.run(closed_loop(url, make, 2, 3.0))  # warm-up: lazy imports, first feature reads
    levels = []
    for rate in rates:
        outcomes, seconds = asyncio.run(open_loop(url, make, rate, duration_s))
        levels.append(level_of(target, "rate", rate, outcomes, seconds))
        print(asdict(levels[-1]), flush=True)
    for c in clients:
        outcomes, seconds = asyncio.run(closed_loop(url, make, c, duration_s))
        levels.append(level_of(target, "concurrency", c, outcomes, seconds))
        print(asdict(levels[-1]), flush=True)
    return levels


def best_rate(levels: list[Level], target: str, budget_ms: float) -> int | None:
    """The highest offered rate whose p99 stayed within the budget with no errors."""
    good = [
        lv.level
        for lv in levels
        if lv.target == target and lv.mode == "rate" and lv.p99_ms <= budget_ms and lv.errors == 0
    ]
    return max(good) if good else None


def markdown(meta: dict[str, Any], levels: list[Level], budget_ms: float) -> str:
    lines = [
        "# Serving under load (open and closed loop, real HTTP, load from a separate process)",
        "",
        f"{meta['when']}, {meta['machine']}, {meta['cores']} cores (server and load generator share them); "
        f"command: `{meta['command']}`",
        "",
        *level_table(levels, budget_ms),
    ]
    return "\n".join(lines)


def level_table(levels: list[Level], budget_ms: float) -> list[str]:
    """Markdown lines: one table row per level, then each target's highest rate within the budget."""
    lines = [
        "| target | mode | level | sent | ok | errors | fallbacks | throughput req/s "
        "| p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in levels:
        unit = "req/s offered" if lv.mode == "rate" else "clients"
        lines.append(
            f"| {lv.target} | {lv.mode} | {lv.level} {unit} | {lv.sent} | {lv.ok} | {lv.errors} | "
            f"{lv.fallbacks} | {lv.throughput} | {lv.p50_ms} | {lv.p99_ms} | {lv.max_ms} |"
        )
    lines.append("")
    for target in dict.fromkeys(lv.target for lv in levels):
        rate = best_rate(levels, target, budget_ms)
        lines.append(
            f"- {target}: highest offered rate with p99 <= {budget_ms:.0f} ms and no errors: "
            f"{f'{rate} req/s' if rate else 'none of those tried'}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    parser.add_argument("--rates", type=int, nargs="+", default=[10, 25, 50, 100])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per level")
    parser.add_argument("--p99-budget-ms", type=float, default=200.0)
    parser.add_argument("--skip-echo", action="store_true")
    args = parser.parse_args()

    config = load_config(args.config, args.overrides)
    state = StateDir(config.state_dir)
    make = fresh_requests(state)

    levels: list[Level] = []
    logs = state.root / "load"
    logs.mkdir(parents=True, exist_ok=True)
    if not args.skip_echo:
        echo_port = free_port()
        echo = [sys.executable, str(HERE / "echo_app.py"), "--port", str(echo_port)]
        base = f"http://{config.serve.host}:{echo_port}"
        with running(echo, base, logs / "echo.log"):
            levels += measure("echo app (floor)", base, make, args.rates, args.concurrency, args.duration)
    serve_cmd = [sys.executable, "-m", "recsys", "serve"]
    if args.config:
        serve_cmd += ["--config", str(args.config)]
    for override in args.overrides:
        serve_cmd += ["--set", override]
    serve_port = free_port()
    serve_cmd += ["--set", f"serve.port={serve_port}"]
    base = f"http://{config.serve.host}:{serve_port}"
    with running(serve_cmd, base, logs / "serve.log"):
        levels += measure("recsys serve", base, make, args.rates, args.concurrency, args.duration)

    command = " ".join(
        [
            "python benchmarks/load.py",
            *(["--config", str(args.config)] if args.config else []),
            *(f"--set {o}" for o in args.overrides),
            "--rates",
            *map(str, args.rates),
            "--concurrency",
            *map(str, args.concurrency),
            f"--duration {args.duration:g}",
        ]
    )
    meta = run_meta(command, dataset_version=state.latest_dataset_version())
    text = markdown(meta, levels, args.p99_budget_ms)
    save("load", {**meta, "levels": [asdict(lv) | {"throughput": lv.throughput} for lv in levels]}, text)
    print(text)


if __name__ == "__main__":
    main()
