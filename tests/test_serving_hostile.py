"""Thousands of malformed and hostile requests against the ingress app, in process: 4xx, never 5xx.

Every answer that is not a success must be a 4xx with a readable one-line `error`; a body the request
model accepts must be answered 200 (the oracle is the request model itself). Afterwards the stored state
is intact: the event log holds exactly the events acknowledged, and the service answers as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from test_serving_api import stages

from serving.api import create_api
from serving.events import EventLog
from serving.recommender import IngressState, LocalRanking, LocalRetrieval, Recommender
from serving.schemas import request_model
from serving.session import SessionStore

pytestmark = pytest.mark.slow  # ~4,000 requests: about a minute on a 2-core machine

MAX_K = 20
TOKEN = "s3cret"
HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "\x00",
            "u1\x00",
            "' OR 1=1 --",
            "<script>alert(1)</script>",
            "../../etc/passwd",
            "${jndi:ldap://x}",
            "\ud7ff\ue000\U0010ffff",
            "🙂" * 300,
            "a" * 257,
            "__warm_up__",
            "%00",
            "NaN",
        ]
    ),
)
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, MAX_K, MAX_K + 1, 10**9, 2**63, -(2**63)]),
    st.floats(allow_nan=False, allow_infinity=False),
)
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, HOSTILE_TEXT),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(HOSTILE_TEXT, inner, max_size=4),
    max_leaves=12,
)
FIELDS = [
    "user_id",
    "k",
    "surface",
    "device",
    "session_item_ids",
    "current_item_id",
    "exclude_item_ids",
    "debug",
]
EVENT_FIELDS = [
    "event_id",
    "user_id",
    "item_id",
    "event_type",
    "session_id",
    "event_ts",
    "dwell_time_ms",
    "surface",
    "device_type",
    "position",
    "request_id",
]
SETTINGS = settings(
    deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    retrieval, ranking, _ = stages()
    events = tmp_path_factory.mktemp("hostile") / "events"
    state = IngressState(sessions=SessionStore(10, 3600.0), event_log=EventLog(events))
    recommender = Recommender(
        LocalRetrieval(retrieval), LocalRanking(ranking), n_candidates=10, max_k=MAX_K, state=state
    )

    async def reload(_: bytes) -> dict[str, Any]:
        return {"status": "reloaded"}

    api = create_api(recommender, MAX_K, admin_token=TOKEN, admin_actions={"reload": reload})
    with TestClient(api, raise_server_exceptions=False) as client:
        yield client, events


ACCEPTED = {"events": 0}


def _check(response: Any) -> None:
    """Never a 5xx; a 4xx carries a readable one-line error."""
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error, str) and error and "\n" not in error and "Traceback" not in error


def _valid_request(raw: bytes) -> bool:
    try:
        request_model(MAX_K).model_validate_json(raw)
    except ValidationError:
        return False
    return True


@given(
    body=st.one_of(
        st.fixed_dictionaries({}, optional={f: JSON_VALUES for f in FIELDS}),
        st.fixed_dictionaries(
            {"user_id": HOSTILE_TEXT},
            optional={"k": NUMBERS, "surface": HOSTILE_TEXT, "exclude_item_ids": st.lists(HOSTILE_TEXT)},
        ),
        st.dictionaries(HOSTILE_TEXT, JSON_VALUES, max_size=5),
        JSON_VALUES,
    )
)
@settings(SETTINGS, max_examples=1500)
def test_recommend_bodies(service: tuple[TestClient, Path], body: Any) -> None:
    client, _ = service
    raw = json.dumps(body).encode()
    response = client.post("/recommend", content=raw, headers={"content-type": "application/json"})
    _check(response)
    assert response.status_code == (200 if _valid_request(raw) else 422)


@given(
    raw=st.one_of(
        st.binary(max_size=200),  # invalid UTF-8 and garbage
        st.sampled_from(
            [
                b"",
                b"{",
                b"null",
                b"[]",
                b'{"user_id": "u1", "k": NaN}',
                b"\xff\xfe{}",
                b'{"user_id": "u1"' + b" " * 100_000 + b"}",
                b'{"user_id": "' + b"x" * 2_000_000 + b'"}',
                b'{"user_id": "u1", "k": 1e999}',
                b'{"user_id": "u1", "user_id": 5}',
                b"[" * 5000 + b"]" * 5000,
            ]
        ),
    ),
    path=st.sampled_from(["/recommend", "/events", "/admin/reload"]),
)
@settings(SETTINGS, max_examples=500)
def test_raw_bodies(service: tuple[TestClient, Path], raw: bytes, path: str) -> None:
    client, _ = service
    headers = {"authorization": f"Bearer {TOKEN}"} if path.startswith("/admin") else {}
    response = client.post(path, content=raw, headers=headers)
    _check(response)
    if path != "/admin/reload":
        assert response.status_code == 422 or (path == "/recommend" and _valid_request(raw))


def _event() -> st.SearchStrategy[dict[str, Any]]:
    good = {
        "event_id": st.uuids().map(str),
        "user_id": st.sampled_from(["u7", "u8"]),  # never u1, whose answers are checked at the end
        "item_id": st.sampled_from(["i3", "i4"]),
        "event_type": st.sampled_from(["click", "impression", "view", "like"]),
        "session_id": st.just("s"),
        "event_ts": st.just("2026-01-01T00:00:00Z"),
    }
    hostile = {field: JSON_VALUES for field in EVENT_FIELDS}
    return st.one_of(
        st.fixed_dictionaries(good),
        st.fixed_dictionaries({}, optional=hostile),
        st.fixed_dictionaries(good).flatmap(
            lambda event: st.sampled_from(EVENT_FIELDS).flatmap(
                lambda field: JSON_VALUES.map(lambda value: {**event, field: value})
            )
        ),
    )


@given(batch=st.one_of(st.fixed_dictionaries({"events": st.lists(_event(), max_size=6)}), JSON_VALUES))
@settings(SETTINGS, max_examples=1000)
def test_event_batches(service: tuple[TestClient, Path], batch: Any) -> None:
    client, _ = service
    response = client.post("/events", content=json.dumps(batch).encode())
    _check(response)
    assert response.status_code in (200, 422)
    body = response.json()
    ACCEPTED["events"] += int(body.get("accepted", 0))


@given(item=HOSTILE_TEXT, k=st.one_of(NUMBERS.map(str), HOSTILE_TEXT))
@settings(SETTINGS, max_examples=500)
def test_similar_and_admin(service: tuple[TestClient, Path], item: str, k: str) -> None:
    client, _ = service
    response = client.get(f"/items/{quote(item, safe='')}/similar", params={"k": k})
    _check(response)
    # Header bytes as a client could send them (HTTP forbids CR, LF and NUL in a header value).
    token = f"Bearer {item}".encode().translate(None, b"\r\n\x00")
    response = client.post("/admin/reload", headers={b"authorization": token}, content=k.encode())
    _check(response)
    assert response.status_code in (401, 403) or item == TOKEN


def test_state_is_intact_after_the_storm(service: tuple[TestClient, Path]) -> None:
    """Runs after the property tests (file order): the log holds exactly what was acknowledged."""
    client, events = service
    if ACCEPTED["events"] == 0:
        pytest.skip("runs after test_event_batches in the same session")
    stored = EventLog(events).read()
    assert len(stored) == ACCEPTED["events"]
    assert {"u7", "u8"} <= set(stored["user_id"]) and "u1" not in set(stored["user_id"])
    for column in ("event_id", "user_id", "item_id", "event_type", "session_id"):
        assert stored[column].map(lambda v: isinstance(v, str) and v != "").all(), column
    assert client.get("/healthz").status_code == 200
    body = client.post("/recommend", json={"user_id": "u1", "k": 3}).json()
    assert [item["item_id"] for item in body["items"]][:1] == ["i11"]
    metrics = client.get("/metrics").text
    assert 'status="error"' not in metrics
