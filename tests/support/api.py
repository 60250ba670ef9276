"""The problem+json bodies the API answers with, as tests expect them."""

from __future__ import annotations

from typing import Any

# The X-Request-ID the test clients send: every problem body echoes it.
REQUEST_ID = "test-request"


def problem(
    status: int,
    title: str,
    detail: str,
    slug: str,
    *,
    request_id: str | None = REQUEST_ID,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": f"https://mailsvc.dev/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }
    if request_id is not None:
        body["request_id"] = request_id
    return body


def invalid(loc: list[str | int], msg: str) -> dict[str, Any]:
    """The 422 for a single field error."""
    return problem(
        422,
        "Unprocessable Content",
        f"{'.'.join(map(str, loc))}: {msg}",
        "validation",
        errors=[{"loc": loc, "msg": msg}],
    )
