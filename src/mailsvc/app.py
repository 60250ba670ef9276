"""The FastAPI application: lifespan, routers, the body limit, and problem+json for every error."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailsvc import __version__
from mailsvc.auth.service import TenantCache
from mailsvc.config import settings
from mailsvc.contacts.endpoints import router as contacts_router
from mailsvc.db import Database
from mailsvc.errors import MailsvcError, Problem, problem, problem_responses
from mailsvc.events.endpoints import router as events_router
from mailsvc.kit.outbox import Publisher
from mailsvc.messages.endpoints import router as messages_router
from mailsvc.metrics import RequestMetrics
from mailsvc.ops.endpoints import router as ops_router
from mailsvc.schedules.endpoints import router as schedules_router
from mailsvc.templates.endpoints import links_router
from mailsvc.templates.endpoints import router as templates_router
from mailsvc.worker.publish import CoalescingPublisher

log = logging.getLogger(__name__)


class BodyLimit:
    """Refuses request bodies over the limit with 413, by Content-Length or while streaming.

    `per_path` raises the limit for particular paths (the batch endpoint takes 500 messages).
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.max_bytes)
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._too_large(scope, receive, send, limit)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise StarletteHTTPException(413, self._detail(limit))
            return message

        await self.app(scope, limited_receive, send)

    @staticmethod
    def _detail(limit: int) -> str:
        return f"the request body is larger than {limit} bytes"

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem(413, "Payload Too Large", self._detail(limit), slug="payload-too-large")
        await response(scope, receive, send)


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            msg = f"the body is not valid JSON: {error.get('ctx', {}).get('error', 'parse error')}"
            errors.append({"loc": ["body"], "msg": msg})
            continue
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
        titles = {404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large"}
        title = titles.get(exc.status_code, "Error")
        return problem(
            exc.status_code,
            title,
            str(exc.detail),
            slug=title.lower().replace(" ", "-"),
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return problem(500, "Internal Server Error", "an unexpected error", slug="internal")


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
        try:
            yield
        finally:
            await publisher.stop()
            if owned:
                await app.state.database.dispose()

    app = FastAPI(
        title="mailsvc",
        version=__version__,
        summary="Email as a service: send, schedule and track email through one JSON API.",
        lifespan=lifespan,
        responses={},
    )
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        per_path={"/v1/messages/batch": settings.max_batch_body_bytes},
    )
    app.add_middleware(RequestMetrics)
    _install_error_handlers(app)
    for router, errors in (
        (messages_router, problem_responses(401, 403, 413, 422)),
        (events_router, problem_responses(401, 403, 413, 422)),
        (contacts_router, problem_responses(401, 403, 404, 422)),
        (templates_router, problem_responses(401, 403, 404, 422)),
        (links_router, problem_responses(401, 403, 422)),
        (schedules_router, problem_responses(401, 403, 404, 422)),
        (ops_router, {}),
    ):
        _summaries_from_docstrings(router)
        app.include_router(router, responses=errors)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


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
