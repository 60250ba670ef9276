"""Domain errors, each with its HTTP status; one handler in app.py renders them as problem+json."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel


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


class ValidationFailed(MailsvcError):
    status_code = 422
    title = "Unprocessable Content"
    type_slug = "validation"


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


_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the given error statuses, each an application/problem+json body."""
    descriptions = {
        401: "Missing, expired or invalid token",
        403: "The token lacks the scope",
        404: "Not found, or another tenant's",
        409: "Conflict",
        413: "Request body larger than the limit",
        422: "Invalid input; every field error is listed",
        503: "A dependency does not answer",
    }
    return {
        code: {
            "description": descriptions[code],
            "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}},
        }
        for code in codes
    }


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
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)
