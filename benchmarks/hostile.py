"""10,000 malformed and hostile requests against a running `recsys serve`, over real HTTP.

    python benchmarks/hostile.py --config configs/default.yaml            # starts the server itself
    python benchmarks/hostile.py --url http://127.0.0.1:8000 --requests 10000

Wrong types, huge k, huge and deeply nested bodies, unknown ids, injection strings and invalid UTF-8,
sent to `/recommend`, `/events`, `/items/{id}/similar` and the admin endpoints. Every answer must be a
4xx with a one-line `error` (or a 200 where the request happens to be valid); afterwards `/healthz`
answers and a valid request is served. Writes `benchmarks/results/hostile.json` and `.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from load import running
from saving import run_meta, save

from recsys.config import load_config

STRINGS = [
    "",
    "\x00",
    "' OR 1=1 --",
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "${jndi:ldap://x}",
    "🙂" * 300,
    "a" * 10_000,
    "%00",
    "NaN",
    "unknown-user-" + "9" * 40,
]
VALUES: list[Any] = [None, True, -1, 0, 10**9, 2**70, -(2**63), 1e308, 3.5, [], {}, [1, "x"], {"a": {"b": 1}}]


def hostile(rng: random.Random) -> tuple[str, str, bytes, dict[str, str]]:
    """One hostile request: method, path, raw body, headers."""
    kind = rng.randrange(9)
    json_type = {"content-type": "application/json"}
    value = rng.choice(STRINGS + VALUES)
    if kind == 0:  # wrong types in every field
        body = {f: rng.choice(STRINGS + VALUES) for f in ("user_id", "k", "surface", "device", "debug")}
        return "POST", "/recommend", json.dumps(body).encode(), json_type
    if kind == 1:  # huge or negative k
        body = {"user_id": "1", "k": rng.choice([0, -5, 101, 10**6, 2**64, "10", 1.5])}
        return "POST", "/recommend", json.dumps(body).encode(), json_type
    if kind == 2:  # invalid UTF-8 and garbage
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        return "POST", rng.choice(["/recommend", "/events"]), raw, json_type
    if kind == 3:  # huge body
        return "POST", "/recommend", b'{"user_id": "' + b"x" * 3_000_000 + b'"}', json_type
    if kind == 4:  # deep nesting
        depth = rng.choice([100, 5000])
        return "POST", "/recommend", b"[" * depth + b"]" * depth, json_type
    if kind == 5:  # events with bad fields
        event = {"event_id": value, "user_id": "1", "item_id": value, "event_type": rng.choice(STRINGS)}
        return "POST", "/events", json.dumps({"events": [event] * rng.choice([1, 5000])}).encode(), json_type
    if kind == 6:  # unknown or hostile ids in the path
        item = rng.choice(["%00", "..%2F..%2Fetc", "x" * 5000, "' OR 1=1", "-1"])
        return "GET", f"/items/{item}/similar?k={rng.choice(['10', '-1', '1e9', 'abc'])}", b"", {}
    if kind == 7:  # admin without, or with a wrong, token
        headers = rng.choice([{}, {"authorization": "Bearer wrong"}, {"authorization": "Basic Og=="}])
        return "POST", "/admin/reload", b"{}", headers | json_type
    return "POST", "/recommend", json.dumps(rng.choice(VALUES)).encode(), json_type  # not an object


async def storm(base: str, n: int, concurrency: int) -> tuple[Counter[str], list[str]]:
    rng = random.Random(0)
    statuses: Counter[str] = Counter()
    problems: list[str] = []
    requests = [hostile(rng) for _ in range(n)]
    queue = iter(requests)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            for method, path, raw, headers in queue:
                try:
                    async with session.request(method, base + path, data=raw, headers=headers) as response:
                        text = await response.text(errors="replace")
                        statuses[str(response.status)] += 1
                        if response.status >= 500:
                            problems.append(f"{response.status} {method} {path[:60]}: {text[:120]}")
                        elif response.status >= 400:
                            error = json.loads(text).get("error") if text.startswith("{") else None
                            if not isinstance(error, str) or not error or "\n" in error:
                                problems.append(f"unreadable {response.status} {path[:60]}: {text[:120]}")
                except (aiohttp.ClientError, TimeoutError) as err:
                    statuses["no answer"] += 1
                    problems.append(f"no answer {method} {path[:60]}: {type(err).__name__}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses, problems


async def still_serving(base: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/healthz") as health:
            healthz = health.status
        async with session.post(f"{base}/recommend", json={"user_id": "1", "k": 10}) as answer:
            body = await answer.json()
            return {"healthz": healthz, "valid_request": answer.status, "items": len(body.get("items", []))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=None, help="a running server; without it one is started")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    def run(base: str) -> dict[str, Any]:
        started = time.perf_counter()
        statuses, problems = asyncio.run(storm(base, args.requests, args.concurrency))
        seconds = round(time.perf_counter() - started, 1)
        return {"statuses": dict(statuses), "problems": problems[:20], "n_problems": len(problems)} | {
            "seconds": seconds,
            "after": asyncio.run(still_serving(base)),
        }

    if args.url:
        result = run(args.url)
    else:
        config = load_config(args.config, [])
        base = f"http://{config.serve.host}:{config.serve.port}"
        command = [sys.executable, "-m", "recsys", "serve"] + (
            ["--config", str(args.config)] if args.config else []
        )
        logs = Path(config.state_dir) / "load"
        logs.mkdir(parents=True, exist_ok=True)
        with running(command, base, logs / "hostile.log"):
            result = run(base)
    cmd = f"python benchmarks/hostile.py --requests {args.requests} --concurrency {args.concurrency}"
    meta = run_meta(cmd)
    lines = [
        "# Hostile requests over HTTP",
        "",
        f"{meta['when']}, {meta['machine']}, {meta['cores']} cores; command: `{cmd}`",
        "",
        f"- {args.requests:,} requests in {result['seconds']} s; answers by status: {result['statuses']}",
        f"- 5xx, unreadable errors or no answer: {result['n_problems']}",
        f"- afterwards: {result['after']}",
        *(f"  - {p}" for p in result["problems"]),
    ]
    text = "\n".join(lines)
    save("hostile", {**meta, **result}, text)
    print(text)
    sys.exit(1 if result["n_problems"] else 0)


if __name__ == "__main__":
    main()
