"""JSON values on their way into PostgreSQL, which can store U+0000 in neither text nor jsonb."""

from __future__ import annotations

import json
from typing import Any, TypeVar

T = TypeVar("T")


def has_nul(value: Any) -> bool:
    """Whether a JSON value holds U+0000 in any string or key."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    return False


def no_nul(value: T) -> T:
    """A field validator: refuse U+0000 here rather than fail at the INSERT."""
    if has_nul(value):
        raise ValueError("must not contain NUL characters")
    return value


def json_size(value: Any) -> int:
    """Bytes of a value as compact UTF-8 JSON: what a size limit on a JSON field counts."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
