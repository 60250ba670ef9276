"""Time in one place: timezone-aware UTC, and a clock that tests can pass in."""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


# Names in the tz database that are not places: the host's own zone, and tzdata's placeholder.
_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})


@cache
def time_zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - _NOT_ZONES


def check_time_zone(value: str) -> str:
    """An IANA zone name that loads, such as 'Europe/Paris'; ValueError otherwise."""
    if value not in time_zone_names():
        raise ValueError(
            f"{value!r} is not an IANA time zone name, such as 'Europe/Paris' or 'UTC'"
        )
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"time zone {value!r} cannot be loaded") from exc
    return value
