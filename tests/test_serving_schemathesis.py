"""Schemathesis against the published OpenAPI schema of the ingress: generated requests for every
operation, never a 5xx, a readable one-line error on every 4xx, and every answer within its schema.

Schemathesis's own pytest plugin does not run under this pytest; its operations' Hypothesis strategies
are driven here directly, one test per operation.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance
from test_serving_api import stages

from serving.api import create_api
from serving.events import EventLog
from serving.recommender import IngressState, LocalRanking, LocalRetrieval, Recommender
from serving.session import SessionStore

pytestmark = pytest.mark.slow
OPERATIONS = [
    "POST /recommend",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "POST /events",
    "GET /items/{item_id}/similar",
    "POST /admin/reload",
    "PUT /admin/experiments",
]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    retrieval, ranking, _ = stages()
    state = IngressState(
        sessions=SessionStore(10, 3600.0), event_log=EventLog(tmp_path_factory.mktemp("st") / "events")
    )
    recommender = Recommender(
        LocalRetrieval(retrieval), LocalRanking(ranking), n_candidates=10, max_k=20, state=state
    )

    async def reload(_: bytes) -> dict[str, Any]:
        return {"status": "reloaded"}

    api = create_api(recommender, 20, admin_token="s3cret", admin_actions={"reload": reload})
    return schemathesis.openapi.from_asgi("/openapi.json", api)


def test_the_schema_lists_every_operation(api_schema: Any) -> None:
    assert sorted(result.ok().label for result in api_schema.get_all_operations()) == sorted(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_generated_requests_get_answers_within_the_schema(api_schema: Any, label: str) -> None:
    (operation,) = [r.ok() for r in api_schema.get_all_operations() if r.ok().label == label]
    statuses: set[int] = set()

    @given(case=operation.as_strategy())
    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        response = case.call()
        statuses.add(response.status_code)
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
        if response.status_code >= 400:
            error = response.json()["error"]
            assert isinstance(error, str) and error and "\n" not in error

    check()
    assert statuses and max(statuses) < 500
