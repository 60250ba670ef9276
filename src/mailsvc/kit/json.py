"""JSON from the outside world, checked once for what no field validator should have to know.

Every request body is read here: it must be UTF-8 JSON (400 otherwise), nested at most
MAX_DEPTH levels, and no string or key may hold U+0000 (which PostgreSQL stores in neither text
nor jsonb) or half of a surrogate pair (`"\\ud800"` is valid JSON but not valid Unicode: asyncpg
cannot encode it). Each problem is reported at its exact place, so a 422 names the field.
The walk is iterative: a deep document cannot exhaust the interpreter's stack.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 32
MAX_PROBLEMS = 20
_SURROGATE = re.compile(r"[\ud800-\udfff]")

Loc = tuple[str | int, ...]


class NotJson(ValueError):
    """The bytes are not a UTF-8 JSON document."""


class TooDeep(ValueError):
    """Nested deeper than the parser itself goes: far past MAX_DEPTH."""


@dataclass(frozen=True)
class JsonProblem:
    loc: Loc
    msg: str


def string_problem(value: str) -> str | None:
    """Why a string cannot be stored, or None."""
    if "\x00" in value:
        return "must not contain NUL characters"
    found = _SURROGATE.search(value)
    if found is not None:
        return f"must not contain unpaired surrogates (found U+{ord(found.group()):04X})"
    return None


_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def storable(text: str | None) -> str | None:
    """Text from outside that must be kept, not refused (a provider's error reply), with what
    PostgreSQL cannot store replaced: a write that fails after a send would send it again."""
    return None if text is None else _UNSTORABLE.sub("\ufffd", text)


def problems(value: Any, *, max_depth: int = MAX_DEPTH) -> list[JsonProblem]:
    """What is wrong with a parsed document, each at its place (at most MAX_PROBLEMS)."""
    found: list[JsonProblem] = []
    stack: list[tuple[Any, Loc, int]] = [(value, (), 0)]
    while stack and len(found) < MAX_PROBLEMS:
        item, loc, depth = stack.pop()
        if isinstance(item, str):
            reason = string_problem(item)
            if reason is not None:
                found.append(JsonProblem(loc, reason))
            continue
        if not isinstance(item, dict | list):
            continue
        if depth == max_depth:
            found.append(JsonProblem(loc, f"is nested more than {max_depth} levels deep"))
            continue
        if isinstance(item, dict):
            for key, child in item.items():
                reason = string_problem(key)
                if reason is not None:
                    found.append(JsonProblem((*loc, key), f"key {reason}"))
                    continue
                stack.append((child, (*loc, key), depth + 1))
        else:
            stack.extend((child, (*loc, index), depth + 1) for index, child in enumerate(item))
    return sorted(found, key=lambda p: [str(part) for part in p.loc])


def _no_constant(name: str) -> Any:
    raise NotJson(f"the body is not valid JSON: {name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999: Python makes it infinity, which jsonb cannot hold
        raise NotJson(f"the body is not valid JSON: {text[:40]} is too large a number")
    return value


def parse(raw: bytes) -> Any:
    """A JSON document (RFC 8259: no NaN or Infinity) from UTF-8 bytes; NotJson saying why it
    is not one, TooDeep when it is nested past what the parser itself goes."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotJson(f"the body is not UTF-8: byte {exc.start} is invalid") from exc
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise NotJson(f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise TooDeep(f"is nested more than {MAX_DEPTH} levels deep") from exc
    except NotJson:
        raise
    except ValueError as exc:  # an integer past Python's 4,300-digit conversion limit
        raise NotJson(f"the body is not valid JSON: {exc}") from exc


def json_size(value: Any) -> int:
    """Bytes of a value as compact UTF-8 JSON: what a size limit on a JSON field counts."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
