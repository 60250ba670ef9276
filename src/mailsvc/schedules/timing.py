"""When recurring jobs fire: cron expressions in a time zone, and who is due at a given instant.

Pure functions: no clock and no I/O. `now` is always passed in, and every datetime in or out is
timezone-aware.
"""

from __future__ import annotations

import calendar
import re
import zoneinfo
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import cache, lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo

# The defaults of a tenant without its own settings.
BIRTHDAY_CRON = "0 9 * * *"  # 09:00 in each contact's own time zone
ACTIVATION_DAYS = 3  # days after sign-up
WEEKLY_REPORT_CRON = "0 9 * * 1"  # Mondays 09:00 in the schedule's zone
# The jobs run from Celery Beat at the top of every hour.
JOB_INTERVAL = timedelta(hours=1)
# A reminder whose run was missed (an outage) still goes out this long after it was due.
ACTIVATION_CATCH_UP = timedelta(days=2)
# The Gregorian calendar repeats, weekdays included, every 400 years: 146,097 days, exactly
# 20,871 weeks. A day that matches nowhere in one cycle matches never, so a search that covers a
# cycle is exhaustive. (The longest real gap is 40 years: "0 0 29 2 */7", Sunday February 29,
# from 2088 to 2128.)
_CYCLE_MONTHS = 400 * 12

_NUMBER = re.compile(r"[0-9]{1,4}")
_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
_DAY_NAMES = {
    name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
}
# (name, lowest, highest, names); day-of-week takes 7 as well as 0 for Sunday.
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTH_NAMES),
    ("day-of-week", 0, 7, _DAY_NAMES),
)
# The lengths each month has in some year.
_MONTH_LENGTHS = (
    (31,),
    (28, 29),
    (31,),
    (30,),
    (31,),
    (30,),
    (31,),
    (31,),
    (30,),
    (31,),
    (30,),
    (31,),
)


def _require_aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {value!r}")


def local_instant(wall: datetime, tz: tzinfo) -> datetime:
    """The UTC instant a wall-clock time in `tz` stands for.

    When the clocks go back, a wall time happens twice: the first is taken. When they go
    forward, a wall time in the gap never happens: the first instant after it (the moment of the
    change) is taken, so a job set for 02:30 runs at 03:00 that night rather than not at all.
    """
    wall = wall.replace(tzinfo=None)
    # fold=0 reads a wall time with the offset in force before a change (PEP 495): for a
    # repeated time that is its first occurrence; for a skipped one, an instant past the gap.
    instant = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == wall:
        return instant
    # In the gap: the change happened between the two readings; find its second.
    lo = int(wall.replace(tzinfo=tz, fold=1).timestamp())  # the offset after: before the change
    hi = int(instant.timestamp())
    before = datetime.fromtimestamp(lo, tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)


# -- cron ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cron:
    """A parsed "minute hour day-of-month month day-of-week" expression.

    As in Vixie cron, when day-of-month and day-of-week are both restricted (neither starts with
    `*`), a day matches when either does; otherwise both must.
    """

    expr: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday … 6 = Saturday
    any_day: bool  # day-of-month starts with '*'
    any_weekday: bool  # day-of-week starts with '*'
    times: tuple[tuple[int, int], ...]  # every (hour, minute) of a firing day, in order
    # The matching days of a month, by its length (28-31) and the weekday of its 1st (0 = Sunday).
    month_days: tuple[tuple[tuple[int, ...], ...], ...]

    @property
    def send_time(self) -> time | None:
        """The time of day when the expression names exactly one ("0 9 * * *" → 09:00)."""
        if len(self.hours) == 1 and len(self.minutes) == 1:
            return time(self.hours[0], self.minutes[0])
        return None

    def matches_day(self, day: date) -> bool:
        return day.month in self.months and day.day in self._days_of(day.year, day.month)

    def _firings(self, day: date, tz: tzinfo) -> _Firings:
        return _Firings(self.times, day, tz)

    def _days_of(self, year: int, month: int) -> tuple[int, ...]:
        first_weekday, length = calendar.monthrange(year, month)  # Monday = 0
        return self.month_days[length - 28][(first_weekday + 1) % 7]

    def next_after(self, after: datetime, tz: tzinfo) -> datetime:
        """The first firing strictly after `after`, as a UTC instant.

        Walks month by month, at most one 400-year calendar cycle: a table lookup per month, so
        even the longest real gap (40 years) costs a few hundred steps.
        """
        _require_aware(after, "after")
        # The day before too: a wall time repeated when the clocks go back can be read either way.
        start = after.astimezone(tz).date() - timedelta(days=1)
        year, month = start.year, start.month
        for _ in range(_CYCLE_MONTHS + 1):
            if month in self.months:
                for day_of_month in self._days_of(year, month):
                    day = date(year, month, day_of_month)
                    if day < start:
                        continue
                    firings = self._firings(day, tz)
                    # Instants rise with the wall clock (the mapping is monotonic), so a day whose
                    # last firing is not after `after` has none that is; bisection finds the first.
                    if firings[-1] > after:
                        return firings[bisect_right(firings, after)]
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        raise ValueError(f"cron {self.expr!r} never fires")

    def latest_at_or_before(
        self, at: datetime, tz: tzinfo, *, within: timedelta = timedelta(days=8)
    ) -> datetime | None:
        """The most recent firing at or before `at` and no earlier than `at - within`, in UTC."""
        _require_aware(at, "at")
        earliest = at - within
        day = at.astimezone(tz).date() + timedelta(days=1)
        last_day = earliest.astimezone(tz).date() - timedelta(days=1)
        while day >= last_day:
            if self.matches_day(day):
                firings = self._firings(day, tz)
                if firings[0] <= at:
                    found = firings[bisect_right(firings, at) - 1]
                    return found if found >= earliest else None
            day -= timedelta(days=1)
        return None


class _Firings:
    """The firing instants of one day, computed lazily: a sequence for bisect."""

    def __init__(self, times: tuple[tuple[int, int], ...], day: date, tz: tzinfo) -> None:
        self.times, self.day, self.tz = times, day, tz

    def __len__(self) -> int:
        return len(self.times)

    def __getitem__(self, index: int) -> datetime:
        hour, minute = self.times[index]
        return local_instant(datetime.combine(self.day, time(hour, minute)), self.tz)


def _field_value(text: str, name: str, lowest: int, highest: int, names: dict[str, int]) -> int:
    if text.lower() in names:
        return names[text.lower()]
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"{name}: {text!r} is not a number")
    value = int(text)
    if not lowest <= value <= highest:
        raise ValueError(f"{name}: {value} is out of range {lowest}-{highest}")
    return value


def _parse_field(
    text: str, name: str, lowest: int, highest: int, names: dict[str, int]
) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise ValueError(f"{name}: empty item in list {text!r}")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _NUMBER.fullmatch(step_text) or int(step_text) < 1:
                raise ValueError(
                    f"{name}: step {step_text!r} in {item!r} is not a whole number of at least 1"
                )
            step = int(step_text)
        if base == "*":
            start, end = lowest, highest
        elif "-" in base:
            first, _, last = base.partition("-")
            start = _field_value(first, name, lowest, highest, names)
            end = _field_value(last, name, lowest, highest, names)
            if start > end:
                raise ValueError(f"{name}: range {base!r} runs backwards")
        else:
            start = _field_value(base, name, lowest, highest, names)
            end = highest if slash else start  # "5/15": from 5 to the end, every 15
        values.update(range(start, end + 1, step))
    return frozenset(values)


@lru_cache(maxsize=1024)  # bounded: every PUT may bring a new expression
def parse_cron(expr: str) -> Cron:
    """Parse "minute hour day-of-month month day-of-week"; ValueError says what is wrong."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(
            "expected 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(fields)} in {expr!r}"
        )
    minutes, hours, days, months, weekdays = (
        _parse_field(text, *spec) for text, spec in zip(fields, _FIELDS, strict=True)
    )
    weekdays = frozenset(d % 7 for d in weekdays)
    # Vixie cron decides on the field's first character, before expanding it: "*/7" counts as
    # unrestricted (AND), "1-31/7" as restricted (OR).
    any_day, any_weekday = fields[2].startswith("*"), fields[4].startswith("*")

    def matches(day_of_month: int, weekday: int) -> bool:
        by_day, by_weekday = day_of_month in days, weekday in weekdays
        return (by_day and by_weekday) if any_day or any_weekday else (by_day or by_weekday)

    month_days = tuple(
        tuple(
            tuple(d for d in range(1, length + 1) if matches(d, (first + d - 1) % 7))
            for first in range(7)
        )
        for length in range(28, 32)
    )
    # Every length a month has occurs with its 1st on every weekday within the 400-year cycle,
    # so this is exactly "next_after finds a day". Only day-of-month ANDed with day-of-week can
    # fail it ("0 9 31 2 *", "0 9 30 2 */2"): OR always has the weekdays, and a day-of-month
    # starting with '*' always has the 1st.
    if not any(
        month_days[length - 28][first]
        for m in months
        for length in _MONTH_LENGTHS[m - 1]
        for first in range(7)
    ):
        raise ValueError(
            f"day-of-month: {fields[2]!r} never falls in month {fields[3]!r}, "
            "so the cron never fires"
        )
    return Cron(
        expr=" ".join(fields),
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        days=days,
        months=months,
        weekdays=weekdays,
        any_day=any_day,
        any_weekday=any_weekday,
        times=tuple((h, m) for h in sorted(hours) for m in sorted(minutes)),
        month_days=month_days,
    )


# -- birthdays -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BirthdayTarget:
    """Contacts in `zones` born on one of `birth_mds` (month*100 + day) are due on `local_date`."""

    local_date: date
    birth_mds: tuple[int, ...]
    zones: tuple[str, ...]


@cache
def all_zones() -> tuple[tuple[str, ZoneInfo], ...]:
    """Every IANA zone this host knows, loaded once."""
    return _load(sorted(zoneinfo.available_timezones()))


def _load(names: Iterable[str]) -> tuple[tuple[str, ZoneInfo], ...]:
    loaded = []
    for name in names:
        try:
            loaded.append((name, ZoneInfo(name)))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            continue  # not a zone (a stale name, a broken 'localtime' link): no one is due
    return tuple(loaded)


def birth_mds_on(day: date) -> tuple[int, ...]:
    """The birthdays celebrated on `day`: Feb 29 birthdays fall on Feb 28 in other years."""
    md = day.month * 100 + day.day
    if md == 228 and not calendar.isleap(day.year):
        return (228, 229)
    return (md,)


def birthday_targets(
    now: datetime, send_at: time, zones: Iterable[str] | None = None
) -> list[BirthdayTarget]:
    """Where it is a contact's birthday and the send time has come, at `now`.

    Zones are grouped by their local date; only those whose local time of day is at or past
    `send_at` are kept, so an hourly run catches up on one missed earlier the same local day.
    `zones` defaults to every zone; names that are not zones are left out.
    """
    _require_aware(now, "now")
    if send_at.tzinfo is not None:
        raise ValueError("send_at is a wall-clock time of day: give it without tzinfo")
    loaded = all_zones() if zones is None else _load(sorted(set(zones)))
    by_date: dict[date, list[str]] = {}
    for name, tz in loaded:
        local = now.astimezone(tz)
        if local.time() >= send_at:
            by_date.setdefault(local.date(), []).append(name)
    return [
        BirthdayTarget(local_date=day, birth_mds=birth_mds_on(day), zones=tuple(names))
        for day, names in sorted(by_date.items())
    ]


# -- activation reminders ------------------------------------------------------------------------


def activation_window(now: datetime, days: int) -> tuple[datetime, datetime]:
    """signed_up_at in (start, end]: due `days` days after sign-up, caught up for two more days."""
    _require_aware(now, "now")
    end = now - timedelta(days=days)
    return end - ACTIVATION_CATCH_UP, end


# -- weekly report -------------------------------------------------------------------------------


class WeeklyReport(NamedTuple):
    period: str  # the ISO week reported on: "2026-W47"
    start: datetime  # its Monday 00:00 in the schedule's zone, in UTC
    end: datetime  # the next Monday 00:00, exclusive


def iso_week_label(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def weekly_report_due(now: datetime, cron: Cron, tz: tzinfo) -> WeeklyReport | None:
    """The report due at `now`, if any: last week's, once this week's firing time has come.

    Any run after the firing and before the following week sends it, so a missed run is caught
    up; the send ledger keeps it to one per period.
    """
    _require_aware(now, "now")
    fired = cron.latest_at_or_before(now, tz)
    local_now = now.astimezone(tz)
    if fired is None or fired.astimezone(tz).isocalendar()[:2] != local_now.isocalendar()[:2]:
        return None
    monday = local_now.date() - timedelta(days=local_now.weekday())
    previous = monday - timedelta(days=7)
    return WeeklyReport(
        period=iso_week_label(previous),
        start=local_instant(datetime.combine(previous, time()), tz),
        end=local_instant(datetime.combine(monday, time()), tz),
    )


# -- next runs, for the API ----------------------------------------------------------------------


def next_hourly_run(now: datetime) -> datetime:
    """The next top of the hour strictly after `now`, in UTC: when Beat next runs the jobs."""
    _require_aware(now, "now")
    hour = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return hour + JOB_INTERVAL


def next_runs(cron: Cron, tz: tzinfo, after: datetime, count: int) -> list[datetime]:
    """The next `count` firings of `cron` in `tz` after `after`, in UTC."""
    runs: list[datetime] = []
    for _ in range(count):
        after = cron.next_after(after, tz)
        runs.append(after)
    return runs


def next_run(
    name: str, *, enabled: bool, cron: Cron | None, tz: tzinfo, now: datetime
) -> datetime | None:
    """When the job `name` next sends for a tenant: None when it is disabled.

    The birthday and activation jobs look for due contacts every hour, so theirs is the next
    hourly run; the weekly report's is its next firing in the schedule's zone.
    """
    if not enabled:
        return None
    if name == "weekly_report":
        if cron is None:
            raise ValueError("the weekly report needs a cron expression")
        return cron.next_after(now, tz)
    return next_hourly_run(now)
