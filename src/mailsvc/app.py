"""The FastAPI application: lifespan, routers, middleware, and problem+json for every error."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from mailsvc import __version__
from mailsvc.auth.service import TenantCache
from mailsvc.config import RateLimitSpec, settings
from mailsvc.contacts.endpoints import router as contacts_router
from mailsvc.db import Database, database_unavailable, describe_outage
from mailsvc.errors import MailsvcError, Problem, problem
from mailsvc.events.endpoints import router as events_router
from mailsvc.kit.asgi import HttpMiddleware
from mailsvc.kit.outbox import Publisher
from mailsvc.messages.endpoints import router as messages_router
from mailsvc.metrics import RequestMetrics
from mailsvc.ops.endpoints import router as ops_router
from mailsvc.ratelimit.api import ApiRateLimit
from mailsvc.ratelimit.limiter import RateLimiter
from mailsvc.ratelimit.policy import RateLimits
from mailsvc.ratelimit.repository import RateLimitRepository
from mailsvc.routing import RATE_LIMIT_HEADERS, ApiRoute
from mailsvc.schedules.endpoints import router as schedules_router
from mailsvc.templates.endpoints import links_router
from mailsvc.templates.endpoints import router as templates_router
from mailsvc.worker.publish import CoalescingPublisher

log = logging.getLogger(__name__)

UNAVAILABLE_RETRY_AFTER_SECONDS = 2
API_LIMIT_REDIS_TIMEOUT = 0.25


class ErrorBoundary(HttpMiddleware):
    """The last word on an exception no handler took: 503 when PostgreSQL is unavailable, else 500.

    Either way the client gets problem+json and the log gets one entry: a line for an outage
    (thousands of requests can fail in a second), a traceback for a bug. Nothing is re-raised,
    so the server does not log the same failure a second time.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception as exc:
            if started:  # the response is on its way: nothing better can be sent
                raise
            if database_unavailable(exc):
                log.warning(
                    "PostgreSQL is unavailable: %s %s answered 503 (%s)",
                    scope["method"],
                    scope["path"],
                    describe_outage(exc),
                )
                response = problem(
                    503,
                    "Service Unavailable",
                    "the database does not answer; nothing was stored, try again shortly",
                    slug="unavailable",
                    headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_SECONDS)},
                )
            else:
                log.exception("unhandled error in %s %s", scope["method"], scope["path"])
                response = problem(
                    500, "Internal Server Error", "an unexpected error", slug="internal"
                )
            await response(scope, receive, send)


class RateLimitHeaders(HttpMiddleware):
    """Adds the tenant's RateLimit-Policy / RateLimit fields (routing.ApiRoute found them) to
    whatever the request answers, errors included."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                found = scope.get("state", {}).get(RATE_LIMIT_HEADERS)
                if found:
                    present = {name.lower() for name, _ in message.get("headers", [])}
                    message["headers"] = [
                        *message.get("headers", []),
                        *(
                            (name.lower().encode("latin-1"), value.encode("latin-1"))
                            for name, value in found.items()
                            if name.lower().encode("latin-1") not in present
                        ),
                    ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors():  # a body that is not JSON never gets here (routing.ApiRoute)
        msg = str(error.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        errors.append({"loc": list(error.get("loc", ())), "msg": msg})
    return errors


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MailsvcError)
    async def _domain_error(_: Request, exc: MailsvcError) -> JSONResponse:
        return problem(
            exc.status_code,
            exc.title,
            exc.message,
            slug=exc.type_slug,
            errors=[{"loc": list(e.loc), "msg": e.msg} for e in exc.errors],
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5])
        return problem(422, "Unprocessable Content", detail, slug="validation", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            413: "Payload Too Large",
        }
        title = titles.get(exc.status_code, "Error")
        return problem(
            exc.status_code,
            title,
            str(exc.detail),
            slug=title.lower().replace(" ", "-"),
            headers=dict(exc.headers or {}),
        )


def create_app(*, database: Database | None = None, publish: Publisher | None = None) -> FastAPI:
    """The API. Tests pass their own database (a rolled-back connection) and publisher."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = database is None
        app.state.database = database or Database.from_url(settings.async_database_url)
        publisher = CoalescingPublisher(
            window=settings.publish_window_ms / 1000, max_ids=settings.publish_max_ids
        )
        if publish is None:
            await publisher.start()
        app.state.publish = publish or publisher
        app.state.tenants = TenantCache()
        limiter_redis = _api_limiter_redis()
        app.state.api_rate_limit = (
            None if limiter_redis is None else _api_rate_limit(limiter_redis, app.state.database)
        )
        try:
            yield
        finally:
            await publisher.stop()
            if limiter_redis is not None:
                await limiter_redis.aclose()
            if owned:
                await app.state.database.dispose()

    app = FastAPI(
        title="mailsvc",
        version=__version__,
        summary="Email as a service: send, schedule and track email through one JSON API.",
        lifespan=lifespan,
        responses={},
    )
    # Outermost last: metrics see every status, the boundary's 500s and 503s included.
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(ErrorBoundary)
    app.add_middleware(RequestMetrics)
    _install_error_handlers(app)
    body_limits = {"/v1/messages/batch": settings.max_batch_body_bytes}
    for router in (
        messages_router,
        events_router,
        contacts_router,
        templates_router,
        links_router,
        schedules_router,
        ops_router,
    ):
        _summaries_from_docstrings(router)
        for route in router.routes:
            if isinstance(route, ApiRoute):
                route.max_body_bytes = body_limits.get(route.path, settings.max_body_bytes)
        app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _api_limiter_redis() -> aioredis.Redis | None:
    """A client for the API rate limit, with short timeouts: a slow Redis must not slow accepts."""
    if not settings.redis_url:
        return None
    client: aioredis.Redis = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=API_LIMIT_REDIS_TIMEOUT,
        socket_connect_timeout=API_LIMIT_REDIS_TIMEOUT,
    )
    return client


def _api_rate_limit(client: aioredis.Redis, database: Database) -> ApiRateLimit:
    async def load_limits() -> dict[str, RateLimitSpec]:
        async with database.sessionmaker() as session:
            return await RateLimitRepository(session).all()

    defaults = {"api": settings.api_rate_limit, **settings.rate_limits}
    limits = RateLimits(defaults, load_limits, refresh_seconds=settings.rate_limit_refresh_seconds)
    return ApiRateLimit(RateLimiter(client), limits)


def _summaries_from_docstrings(router: APIRouter) -> None:
    """Each endpoint's one-line docstring is its OpenAPI summary."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.description and not route.summary:
            route.summary, route.description = route.description.strip(), ""


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        spec = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
        )
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(problem_schema.pop("$defs", {}))
        schemas["Problem"] = problem_schema
        # FastAPI documents its own 422 shape; ours is problem+json, listed per route.
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = spec
    return app.openapi_schema
