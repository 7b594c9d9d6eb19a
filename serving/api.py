"""The HTTP surface: FastAPI routes over a `Recommender`, with errors a client can read.

No `from __future__ import annotations` here: FastAPI reads the route signatures at definition time,
and the request model is built per app (its `k` limit comes from configuration).
"""

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.events import EventBatchError
from serving.metrics import CONTENT_TYPE
from serving.recommender import Recommender, ServiceUnavailableError
from serving.schemas import (
    EventsResponse,
    HealthResponse,
    ReadyResponse,
    RecommendResponse,
    SimilarItemsResponse,
    printable_name,
    request_model,
)
from serving.served import ServedLog, serve_recommendation
from serving.stages import UnknownItemError

logger = logging.getLogger(__name__)


def describe_errors(errors: list[dict[str, Any]]) -> str:
    """One line naming each invalid field and what is wrong with it.

    >>> describe_errors([{"loc": ("body", "k"), "msg": "Input should be less than or equal to 100"}])
    'k: Input should be less than or equal to 100'
    >>> describe_errors([{"type": "json_invalid", "loc": ("body",), "msg": "Invalid JSON: EOF at column 3"}])
    'body: invalid JSON (Invalid JSON: EOF at column 3)'
    """
    parts = []
    for error in errors:
        loc = [printable_name(str(part)) for part in error.get("loc", ()) if part != "body"]
        if error.get("type") == "json_invalid":
            parts.append(f"body: invalid JSON ({error.get('msg', 'cannot parse')})")
            continue
        where = ".".join(loc) or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


class RequestCounter:
    """ASGI middleware counting each HTTP request by route and status code.

    Plain ASGI rather than `@app.middleware("http")`: Starlette's `BaseHTTPMiddleware` behind it runs
    every request through a task group and memory streams, which cost more than the count. A request
    that fails before its answer starts counts as a 500.
    """

    def __init__(self, app: ASGIApp, count: Callable[[str, int], None]) -> None:
        self.app = app
        self.count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            # The router records the matched route in the scope it was handed.
            self.count(getattr(scope.get("route"), "path", "unmatched"), status)


class AdminInputError(ValueError):
    """An admin request body that does not validate (422)."""


class AdminAuthError(PermissionError):
    """A missing (401) or wrong (403) admin token, or admin endpoints switched off (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_admin(authorization: str | None, token: str | None) -> None:
    """Accept `Authorization: Bearer <token>` when it matches the configured admin token.

    >>> check_admin("Bearer s3cret", "s3cret")
    >>> check_admin(None, "s3cret")
    Traceback (most recent call last):
    ...
    serving.api.AdminAuthError: admin endpoints need an Authorization: Bearer <token> header
    """
    if not token:
        raise AdminAuthError(403, "admin endpoints are disabled: set serve.admin_token or RECSYS_ADMIN_TOKEN")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise AdminAuthError(401, "admin endpoints need an Authorization: Bearer <token> header")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise AdminAuthError(403, "wrong admin token")


# Admin actions the deployment provides (the API only checks the token and reports the outcome).
AdminAction = Callable[[bytes], Awaitable[dict[str, Any]]]


def create_api(
    recommender: Recommender,
    max_k: int,
    admin_token: str | None = None,
    admin_actions: dict[str, AdminAction] | None = None,
    served_log: ServedLog | None = None,
) -> FastAPI:
    """The FastAPI app of the service; `recommender.warm_up` runs at application start-up.

    Args:
        recommender: Answers the requests.
        max_k: The largest `k` a request may ask for.
        admin_token: Bearer token of the admin endpoints; None disables them (403).
        admin_actions: `reload` and `experiments` handlers, each given the raw request body.
        served_log: Where every answer is logged with its variants (`serving.served`); None: nowhere.
    """
    actions = admin_actions or {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await recommender.warm_up()
        yield

    api = FastAPI(title="recsys serving", version="1", lifespan=lifespan)
    request_type = request_model(max_k)

    @api.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        # `input` echoes the client's payload back and `ctx` may hold exception objects: keep neither.
        detail = [{k: v for k, v in err.items() if k not in ("input", "ctx", "url")} for err in errors]
        return JSONResponse(
            status_code=422,
            content={"error": describe_errors(errors), "detail": jsonable_encoder(detail)},
        )

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Routing errors (404 unknown path, 405 wrong method) in the same `{"error": ...}` shape as ours.
        return JSONResponse(
            status_code=exc.status_code, content={"error": str(exc.detail)}, headers=exc.headers
        )

    @api.exception_handler(ServiceUnavailableError)
    async def unavailable(_: Request, exc: ServiceUnavailableError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"error": str(exc)})

    @api.exception_handler(EventBatchError)
    async def bad_batch(_: Request, exc: EventBatchError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"error": str(exc)})

    @api.exception_handler(UnknownItemError)
    async def unknown_item(_: Request, exc: UnknownItemError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"error": str(exc.args[0])})

    @api.exception_handler(AdminInputError)
    async def bad_admin_input(_: Request, exc: AdminInputError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"error": str(exc)})

    @api.exception_handler(AdminAuthError)
    async def not_admin(_: Request, exc: AdminAuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(status_code=exc.status, content={"error": str(exc)}, headers=headers)

    api.add_middleware(RequestCounter, count=recommender.metrics.count_request)

    @api.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error: %s", exc, exc_info=exc)
        return JSONResponse(status_code=500, content={"error": "internal error"})

    body_schema = {"application/json": {"schema": request_type.model_json_schema()}}

    @api.post(
        "/recommend",
        response_model=RecommendResponse,
        openapi_extra={"requestBody": {"content": body_schema, "required": True}},
    )
    async def recommend(request: Request) -> RecommendResponse:
        """The top `k` items for a user, ranked, with model versions and whether a fallback answered."""
        # The body is JSON whatever the Content-Type says: `curl -d` sends form-urlencoded by default.
        try:
            body = request_type.model_validate_json(await request.body())
        except ValidationError as err:
            errors = [{**error, "loc": ("body", *error["loc"])} for error in err.errors()]
            raise RequestValidationError(errors) from None
        return await serve_recommendation(recommender, body, served_log)

    @api.get("/healthz", response_model=HealthResponse)
    async def healthz() -> HealthResponse:
        """200 with the serving model versions when every stage answers."""
        return await recommender.health()

    @api.get("/readyz", response_model=ReadyResponse, responses={503: {"description": "Not ready"}})
    async def readyz() -> ReadyResponse:
        """200 when the models are loaded, the online store answers and the fallback list is loaded."""
        return await recommender.ready()

    @api.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus text: stage latency histograms, errors, cache, fallbacks, missing features, batches."""
        return Response(recommender.metrics.render(), media_type=CONTENT_TYPE)

    events_schema = {"application/json": {"schema": {"type": "object", "required": ["events"]}}}

    @api.post(
        "/events",
        response_model=EventsResponse,
        responses={422: {"description": "Some or all events rejected; the valid ones are stored"}},
        openapi_extra={"requestBody": {"content": events_schema, "required": True}},
    )
    async def events(request: Request) -> Any:
        """Store a batch `{"events": [...]}` of log-schema events; 422 lists the rejected ones by index."""
        result = await recommender.events(await request.body())
        if result.rejected:
            return JSONResponse(
                status_code=422,
                content={
                    "error": "; ".join(f"events[{r.index}].{r.error}" for r in result.rejected[:20]),
                    **result.model_dump(),
                },
            )
        return result

    @api.get(
        "/items/{item_id}/similar",
        response_model=SimilarItemsResponse,
        responses={404: {"description": "Unknown item"}},
    )
    async def similar(
        item_id: str, k: int = Query(default=10, ge=1, le=max_k, description="How many items.")
    ) -> SimilarItemsResponse:
        """More like this: the items nearest to `item_id` in the retrieval model's item embedding."""
        return await recommender.similar(item_id, k)

    async def admin(request: Request, name: str) -> Any:
        check_admin(request.headers.get("authorization"), admin_token)
        if name not in actions:
            raise ServiceUnavailableError(f"admin action {name!r} is not available in this deployment")
        return await actions[name](await request.body())

    @api.post("/admin/reload", responses={401: {}, 403: {}})
    async def reload(request: Request) -> Any:
        """Load the models the registry aliases name now (e.g. after `recsys rollback`), switch atomically."""
        return await admin(request, "reload")

    @api.put("/admin/experiments", responses={401: {}, 403: {}, 422: {}})
    async def set_experiments(request: Request) -> Any:
        """Replace the running experiments (the experiments file) and load the variants' models."""
        return await admin(request, "experiments")

    return api
