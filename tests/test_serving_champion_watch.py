"""Following the champion aliases: the pure "did it move" rule, the poller, and the graph reloading."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from test_serving_api import CountRanker, stages

from recsys.config import ServeConfig
from serving.champion_watch import ChampionPoller, moved_stages
from serving.stages import RankingStage, RetrievalStage


def test_moved_stages() -> None:
    serving = {"retrieval": "3", "ranking": "5"}
    assert moved_stages(serving, {"retrieval": "3", "ranking": "5"}) == []
    assert moved_stages(serving, {"retrieval": "3", "ranking": "4"}) == ["ranking"]  # a rollback
    assert moved_stages(serving, {"retrieval": "4", "ranking": "6"}) == ["retrieval", "ranking"]
    assert moved_stages(serving, {"retrieval": None, "ranking": "5"}) == []  # alias gone: keep serving
    assert moved_stages({"ranking": None}, {"ranking": "1"}) == ["ranking"]  # nothing served yet
    assert moved_stages({"ranking": "5"}, {"ranking": 5}) == []  # type: ignore[dict-item]  # versions as ints


class Registry:
    """Aliases and a serving side that a reload moves to what the aliases name."""

    def __init__(self) -> None:
        self.aliases: dict[str, str | None] = {"retrieval": "1", "ranking": "1"}
        self.serving: dict[str, str | None] = dict(self.aliases)
        self.reloads = 0

    def resolve(self) -> Mapping[str, str | None]:
        return dict(self.aliases)

    async def current(self) -> Mapping[str, str | None]:
        return dict(self.serving)

    async def reload(self) -> None:
        self.reloads += 1
        self.serving = {k: v for k, v in self.aliases.items() if v is not None}


def test_poller_reloads_only_when_an_alias_moved() -> None:
    registry = Registry()
    poller = ChampionPoller(registry.resolve, registry.current, registry.reload, every_s=1.0)
    assert asyncio.run(poller.check()) == []
    registry.aliases["ranking"] = "2"
    assert asyncio.run(poller.check()) == ["ranking"]
    assert registry.serving["ranking"] == "2" and registry.reloads == 1
    assert asyncio.run(poller.check()) == []  # already there: no second reload
    registry.aliases["ranking"] = "1"  # recsys rollback
    assert asyncio.run(poller.check()) == ["ranking"] and registry.serving["ranking"] == "1"
    assert registry.reloads == poller.reloads == 2


def test_poller_survives_a_failing_registry() -> None:
    registry = Registry()
    registry.aliases["ranking"] = "9"
    calls = {"n": 0}

    def flaky() -> Mapping[str, str | None]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("registry down")
        return registry.resolve()

    async def scenario() -> None:
        poller = ChampionPoller(flaky, registry.current, registry.reload, every_s=0.01)
        task = asyncio.create_task(poller.run())
        deadline = time.monotonic() + 5
        while registry.reloads == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(scenario())
    assert calls["n"] >= 2 and registry.serving["ranking"] == "9"


class VersionedRanker(CountRanker):
    def __init__(self, version: str) -> None:
        self.version = version


def test_graph_follows_the_ranking_alias(tmp_path: Path) -> None:
    """Serve's local testing mode: moving the alias (a file here) changes the version that ranks."""
    from ray import serve

    from serving.app import build_graph

    alias = tmp_path / "ranking-champion"
    alias.write_text("3")

    def ranking() -> RankingStage:
        return stages(VersionedRanker(alias.read_text()))[1]

    def retrieval() -> RetrievalStage:
        return stages()[0]

    def versions() -> dict[str, str | None]:
        return {"retrieval": "7", "ranking": alias.read_text()}

    settings = ServeConfig(n_candidates=10, max_k=20, champion_poll_s=0.05, cache_ttl_s=0)
    handle = serve.run(
        build_graph(retrieval, ranking, settings, champion_versions=versions), _local_testing_mode=True
    )
    request: dict[str, Any] = {"user_id": "u1", "k": 2}
    assert handle.recommend.remote(request).result()["model_version"]["ranking"] == "3"
    alias.write_text("2")  # recsys rollback
    deadline = time.monotonic() + 10
    version = "3"
    while version != "2" and time.monotonic() < deadline:
        time.sleep(0.05)
        version = handle.recommend.remote(request).result()["model_version"]["ranking"]
    assert version == "2"
