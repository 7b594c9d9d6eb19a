"""The HTTP surface: FastAPI routes over a `Recommender`, with errors a client can read.

No `from __future__ import annotations` here: FastAPI reads the route signatures at definition time,
and the request model is built per app (its `k` limit comes from configuration).
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from serving.recommender import Recommender, ServiceUnavailableError
from serving.schemas import HealthResponse, RecommendResponse, request_model

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
        loc = [str(part) for part in error.get("loc", ()) if part != "body"]
        if error.get("type") == "json_invalid":
            parts.append(f"body: invalid JSON ({error.get('msg', 'cannot parse')})")
            continue
        where = ".".join(loc) or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_api(recommender: Recommender, max_k: int) -> FastAPI:
    """The FastAPI app of the service; `recommender.warm_up` runs at application start-up.

    Args:
        recommender: Answers the requests.
        max_k: The largest `k` a request may ask for.
    """

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

    @api.exception_handler(ServiceUnavailableError)
    async def unavailable(_: Request, exc: ServiceUnavailableError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"error": str(exc)})

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
        return await recommender.recommend(body)

    @api.get("/healthz", response_model=HealthResponse)
    async def healthz() -> HealthResponse:
        """200 with the serving model versions when every stage answers."""
        return await recommender.health()

    return api
