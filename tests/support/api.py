"""The problem+json bodies the API answers with, as tests expect them."""

from __future__ import annotations

from typing import Any


def problem(status: int, title: str, detail: str, slug: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": f"https://mailsvc.dev/problems/{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }


def invalid(loc: list[str | int], msg: str) -> dict[str, Any]:
    """The 422 for a single field error."""
    return problem(
        422,
        "Unprocessable Content",
        f"{'.'.join(map(str, loc))}: {msg}",
        "validation",
        errors=[{"loc": loc, "msg": msg}],
    )
