"""The FastAPI application: lifespan, routers, middleware, and problem+json for every error."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from mailsvc import __version__
from mailsvc.auth.service import TenantCache
from mailsvc.config import RateLimitSpec, Settings
from mailsvc.contacts.endpoints import router as contacts_router
from mailsvc.db import Database, database_unavailable, describe_outage
from mailsvc.errors import FieldError, MailsvcError, Problem, ValidationFailed, problem
from mailsvc.events.endpoints import router as events_router
from mailsvc.kit.asgi import HttpMiddleware
from mailsvc.kit.logging import log_context
from mailsvc.kit.outbox import Publisher
from mailsvc.messages.endpoints import router as messages_router
from mailsvc.metrics import HTTP_DURATION
from mailsvc.ops.endpoints import router as ops_router
from mailsvc.ratelimit.api import ApiRateLimit
from mailsvc.ratelimit.limiter import RateLimiter
from mailsvc.ratelimit.policy import RateLimits
from mailsvc.ratelimit.repository import RateLimitRepository
from mailsvc.routing import RATE_LIMIT_HEADERS, ApiRoute
from mailsvc.schedules.endpoints import router as schedules_router
from mailsvc.templates.endpoints import links_router
from mailsvc.templates.endpoints import router as templates_router
from mailsvc.templates.links import use_link_settings
from mailsvc.worker.app import celery_app, configure
from mailsvc.worker.publish import CoalescingPublisher

log = logging.getLogger(__name__)

UNAVAILABLE_RETRY_AFTER_SECONDS = 2
API_LIMIT_REDIS_TIMEOUT = 0.25


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
access_log = logging.getLogger("mailsvc.access")


class RequestContext(HttpMiddleware):
    """Every request's log lines carry its request id (the caller's X-Request-ID when it is a
    sane one, else a new one), echoed in the response; one access line per request names its
    method, route, status, time and, once the token is read (routing.ApiRoute), its tenant.
    The same timing goes to the latency histogram, by route template (never the raw path: ids
    would explode its labels)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("ascii")),
                ]
            await send(message)

        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                seconds = time.perf_counter() - started
                route = getattr(scope.get("route"), "path", "unmatched")
                HTTP_DURATION.labels(scope["method"], route, str(status)).observe(seconds)
                access_log.info(
                    "%s %s %d %.1f ms", scope["method"], scope["path"], status, seconds * 1000
                )


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


def _field_errors(exc: RequestValidationError) -> list[FieldError]:
    errors = []
    for error in exc.errors():  # a body that is not JSON never gets here (routing.ApiRoute)
        msg = str(error.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        errors.append(FieldError(tuple(error.get("loc", ())), msg))
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
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await _domain_error(request, ValidationFailed.listing(_field_errors(exc), most=5))

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


def create_app(
    *,
    config: Settings | None = None,
    database: Database | None = None,
    publish: Publisher | None = None,
) -> FastAPI:
    """The API, on `config` (by default the MAILSVC_* environment, read here).
    Tests pass their own database (a rolled-back connection) and publisher."""
    config = config or Settings()  # the entry point reads the environment, once, here
    use_link_settings(config)  # links are signed in rendering, verified at /v1/links/verify

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = database is None
        app.state.database = database or Database.from_url(
            config.async_database_url, pool_size=config.db_pool_size
        )
        publisher = CoalescingPublisher(
            window=config.publish_window_ms / 1000, max_ids=config.publish_max_ids
        )
        if publish is None:
            configure(celery_app, config)  # this process publishes to the broker
            await publisher.start()
        app.state.publish = publish or publisher
        app.state.tenants = TenantCache()
        limiter_redis = _api_limiter_redis(config)
        app.state.api_rate_limit = (
            None
            if limiter_redis is None
            else _api_rate_limit(config, limiter_redis, app.state.database)
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
    # Outermost last: the access line and the metrics see every status, the boundary's 500s and
    # 503s included, and the boundary's log lines and problem bodies carry the request id.
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(ErrorBoundary)
    app.add_middleware(RequestContext)
    _install_error_handlers(app)
    app.state.settings = config
    _mount_routers(app, config)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _mount_routers(app: FastAPI, config: Settings) -> None:
    body_limits = {"/v1/messages/batch": config.max_batch_body_bytes}
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
                route.max_body_bytes = body_limits.get(route.path, config.max_body_bytes)
        app.include_router(router)


def _api_limiter_redis(config: Settings) -> aioredis.Redis | None:
    """A client for the API rate limit, with short timeouts: a slow Redis must not slow accepts."""
    if not config.redis_url:
        return None
    client: aioredis.Redis = aioredis.Redis.from_url(
        config.redis_url,
        socket_timeout=API_LIMIT_REDIS_TIMEOUT,
        socket_connect_timeout=API_LIMIT_REDIS_TIMEOUT,
    )
    return client


def _api_rate_limit(config: Settings, client: aioredis.Redis, database: Database) -> ApiRateLimit:
    async def load_limits() -> dict[str, RateLimitSpec]:
        async with database.sessionmaker() as session:
            return await RateLimitRepository(session).all()

    defaults = {"api": config.api_rate_limit, **config.rate_limits}
    limits = RateLimits(defaults, load_limits, refresh_seconds=config.rate_limit_refresh_seconds)
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
