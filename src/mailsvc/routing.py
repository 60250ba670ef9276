"""The route class of every /v1 endpoint: the caller is checked before a byte of its body is read.

In order: the token (401) and its scope (403); the tenant's API rate limit (429); NUL in query
and path values (422); then the body: its media type (415), its size (413), UTF-8 JSON (400),
its depth and characters (422, kit/json.py); then FastAPI's validation and the endpoint. An
anonymous caller learns nothing about what it sent, and an over-limit one costs a Redis call.
Each route documents the statuses it can answer from the same facts (`error_statuses`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.convertors import Convertor, register_url_convertor

from mailsvc.auth.dependencies import RequireScope, authenticate, bearer_claims, check_scope
from mailsvc.config import Settings
from mailsvc.errors import (
    BadRequest,
    FieldError,
    PayloadTooLarge,
    TooManyRequests,
    UnsupportedMediaType,
    ValidationFailed,
    problem_responses,
)
from mailsvc.kit import json as kit_json
from mailsvc.kit.logging import bind
from mailsvc.ratelimit.api import ApiRateLimit

DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class AnyTextConvertor(Convertor[str]):
    """`{name:text}`: the rest of the path, "/" and line breaks included, so that a value the
    route cannot take is refused by its validation (422) rather than not routed (404).
    Starlette's `path` stops at a line break (its regex is `.*`)."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("text", AnyTextConvertor())
RATE_LIMIT_HEADERS = "rate_limit_headers"  # request.state: added to the response (app.py)


def _calls(dependant: Dependant) -> Iterator[Any]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


def _is_json(content_type: str) -> bool:
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        return False
    for param in params.split(";"):
        name, _, value = param.partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            return False
    return True


class ApiRoute(APIRoute):
    # Set per route by app.py from Settings (the batch endpoint takes more).
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        declared = dict(kwargs.pop("responses", None) or {})
        super().__init__(path, endpoint, **kwargs)
        calls = list(_calls(self.dependant))
        self.authenticated = authenticate in calls or any(
            isinstance(call, RequireScope) for call in calls
        )
        self.required_scopes = [call.scope for call in calls if isinstance(call, RequireScope)]
        self.takes_body = self.body_field is not None
        self.responses = {**problem_responses(*self.error_statuses()), **declared}

    def error_statuses(self) -> list[int]:
        """What this route can answer besides success, from how it is built; a route adds
        its own (409) with `responses=`."""
        statuses = {422, 503}
        if self.param_convertors:  # a path value can name nothing, or no route at all ("a/b")
            statuses.add(404)
        if self.authenticated:
            statuses |= {401, 429}
        if self.required_scopes:
            statuses.add(403)
        if self.takes_body:
            statuses |= {400, 413, 415}
        return sorted(statuses)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def route(request: Request) -> Response:
            if self.authenticated:
                claims = bearer_claims(request)
                bind(tenant=claims.tenant_id)
                for scope in self.required_scopes:
                    check_scope(claims.scopes, scope)
                await _rate_limit(request, claims.tenant_id)
            _check_parameters(request)
            if self.takes_body:
                await _read_json_body(request, self.max_body_bytes)
            return await handle(request)

        return route


async def _rate_limit(request: Request, tenant_id: uuid.UUID) -> None:
    limiter: ApiRateLimit | None = getattr(request.app.state, "api_rate_limit", None)
    if limiter is None:
        return
    decision = await limiter.check(tenant_id)
    if decision is None:
        return
    setattr(request.state, RATE_LIMIT_HEADERS, decision.headers)
    if not decision.allowed:
        raise TooManyRequests(
            f"this tenant is over its API rate limit; try again in {decision.retry_after} s",
            headers=decision.headers,
        )


def _check_parameters(request: Request) -> None:
    """Query and path values go into SQL: PostgreSQL takes no U+0000 in text."""
    errors = [
        FieldError((where, name), reason)
        for where, items in (
            ("path", request.path_params.items()),
            ("query", request.query_params.multi_items()),
        )
        for name, value in items
        if isinstance(value, str) and (reason := kit_json.string_problem(value)) is not None
    ]
    if errors:
        raise ValidationFailed.listing(errors, most=5)


async def _read_json_body(request: Request, limit: int) -> None:
    """Read, bound and parse the body, leaving it where FastAPI looks for it."""
    content_type = request.headers.get("content-type")
    if content_type is not None and not _is_json(content_type):
        raise UnsupportedMediaType(
            f"the body must be application/json (UTF-8), not {content_type[:100]!r}"
        )
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    request._body = raw  # Starlette's cache: FastAPI reads the body from here
    if not raw:
        return  # FastAPI answers 422: the body is required
    if content_type is None:
        raise UnsupportedMediaType("give the body's type: Content-Type: application/json")
    try:
        document = kit_json.parse(raw)
    except kit_json.NotJson as exc:
        raise BadRequest(str(exc), errors=[FieldError(("body",), str(exc))]) from exc
    except kit_json.TooDeep as exc:
        raise ValidationFailed(f"body: {exc}", errors=[FieldError(("body",), str(exc))]) from exc
    found = kit_json.problems(document)
    if found:
        errors = [FieldError(("body", *problem.loc), problem.msg) for problem in found]
        raise ValidationFailed.listing(errors, most=5)
    request._json = document  # and the parsed document


async def app_settings(request: Request) -> Settings:  # async: FastAPI runs sync deps in threads
    """The settings the app factory was given: an endpoint reads them here, not globally."""
    config: Settings = request.app.state.settings
    return config


AppSettings = Annotated[Settings, Depends(app_settings)]
