"""Domain errors, each with its HTTP status; one handler in app.py renders them as problem+json."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from mailsvc.kit.logging import context_value


@dataclass(frozen=True)
class FieldError:
    loc: tuple[str | int, ...]
    msg: str


class MailsvcError(Exception):
    status_code = 500
    title = "Internal Server Error"
    type_slug = "internal"

    def __init__(
        self,
        message: str,
        *,
        errors: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.errors = list(errors)
        self.headers = headers or {}


class BadRequest(MailsvcError):
    """The request cannot be read at all (a body that is not JSON); 422 is for content."""

    status_code = 400
    title = "Bad Request"
    type_slug = "bad-request"


class Unauthorized(MailsvcError):
    status_code = 401
    title = "Unauthorized"
    type_slug = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="mailsvc"'})


class Forbidden(MailsvcError):
    status_code = 403
    title = "Forbidden"
    type_slug = "forbidden"


class NotFound(MailsvcError):
    status_code = 404
    title = "Not Found"
    type_slug = "not-found"


class Conflict(MailsvcError):
    status_code = 409
    title = "Conflict"
    type_slug = "conflict"


class PayloadTooLarge(MailsvcError):
    status_code = 413
    title = "Payload Too Large"
    type_slug = "payload-too-large"


class UnsupportedMediaType(MailsvcError):
    status_code = 415
    title = "Unsupported Media Type"
    type_slug = "unsupported-media-type"


class ValidationFailed(MailsvcError):
    status_code = 422
    title = "Unprocessable Content"
    type_slug = "validation"

    @classmethod
    def listing(cls, errors: Sequence[FieldError], *, most: int | None = None) -> ValidationFailed:
        """A 422 listing `errors`, its detail naming each (`loc: msg`), or the first `most`."""
        detail = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors[:most])
        return cls(detail, errors=errors)


class TooManyRequests(MailsvcError):
    status_code = 429
    title = "Too Many Requests"
    type_slug = "rate-limited"


class ServiceUnavailable(MailsvcError):
    status_code = 503
    title = "Service Unavailable"
    type_slug = "unavailable"


def problem_type(slug: str) -> str:
    return f"https://mailsvc.dev/problems/{slug}"


PROBLEM_JSON = "application/problem+json"


class ProblemFieldError(BaseModel):
    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """An error, as RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemFieldError] | None = None
    request_id: str | None = Field(
        default=None,
        description="The request's X-Request-ID (given or made), as in the logs: quote it.",
    )


_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_RETRY_AFTER = {
    "description": "Seconds to wait before trying again",
    "schema": {"type": "integer", "minimum": 1},
}
_RETRY_HEADERS: dict[int, dict[str, Any]] = {
    429: {
        "Retry-After": _RETRY_AFTER,
        "RateLimit-Policy": {
            "description": 'The tenant\'s limit (IETF draft), e.g. "tenant";q=100;w=1;burst=200',
            "schema": {"type": "string"},
        },
        "RateLimit": {
            "description": 'What is left of it now, e.g. "tenant";r=0;t=1',
            "schema": {"type": "string"},
        },
    },
    503: {"Retry-After": _RETRY_AFTER},
}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the given error statuses, each an application/problem+json body."""
    descriptions = {
        400: "The body cannot be read: not UTF-8, or not JSON",
        401: "Missing, expired or invalid token",
        403: "The token lacks the scope",
        404: "Not found, or another tenant's",
        409: "Conflict",
        413: "Request body larger than the limit",
        415: "The body is not application/json",
        422: "Invalid input; every field error is listed",
        429: "Over the tenant's API rate limit; see Retry-After",
        503: "A dependency (PostgreSQL) does not answer; try again after Retry-After",
    }
    return {
        code: {
            "description": descriptions[code],
            "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}},
            **({"headers": _RETRY_HEADERS[code]} if code in _RETRY_HEADERS else {}),
        }
        for code in codes
    }


class ProblemResponse(JSONResponse):
    """problem+json, ASCII-escaped: an error may quote the input it refuses, and input can hold
    what UTF-8 cannot encode (a lone surrogate arrives as valid JSON, "\\ud800")."""

    media_type = PROBLEM_JSON

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    slug: str,
    errors: Sequence[dict[str, Any]] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem_type(slug),
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = list(errors)
    request_id = context_value("request_id")
    if request_id is not None:
        body["request_id"] = request_id
    return ProblemResponse(body, status_code=status, headers=headers)
