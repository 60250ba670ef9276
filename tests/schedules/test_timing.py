"""Cron in a time zone, whose birthday it is where, when the weekly report is due: exactly."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from mailsvc.schedules.timing import (
    BirthdayTarget,
    WeeklyReport,
    activation_window,
    all_zones,
    birthday_targets,
    local_instant,
    next_hourly_run,
    next_run,
    next_runs,
    parse_cron,
    weekly_report_due,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
NINE = time(9, 0)
UTC_ZONE = ZoneInfo("UTC")
FIVE_FIELDS = "expected 5 fields (minute hour day-of-month month day-of-week)"
NEVER = "so the cron never fires"


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# -- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        (
            "0 9 * *",
            f"{FIVE_FIELDS}, got 4 in '0 9 * *'",
        ),
        (
            "0 9 * * * *",
            f"{FIVE_FIELDS}, got 6 in '0 9 * * * *'",
        ),
        ("", f"{FIVE_FIELDS}, got 0 in ''"),
        ("60 9 * * *", "minute: 60 is out of range 0-59"),
        ("0 24 * * *", "hour: 24 is out of range 0-23"),
        ("0 9 0 * *", "day-of-month: 0 is out of range 1-31"),
        ("0 9 * 13 *", "month: 13 is out of range 1-12"),
        ("0 9 * * 8", "day-of-week: 8 is out of range 0-7"),
        ("x 9 * * *", "minute: 'x' is not a number"),
        ("-1 9 * * *", "minute: '' is not a number"),
        ("0 9 * * mon-funday", "day-of-week: 'funday' is not a number"),
        ("5-2 9 * * *", "minute: range '5-2' runs backwards"),
        ("*/0 9 * * *", "minute: step '0' in '*/0' is not a whole number of at least 1"),
        ("*/x 9 * * *", "minute: step 'x' in '*/x' is not a whole number of at least 1"),
        ("0,,30 9 * * *", "minute: empty item in list '0,,30'"),
        ("0 9 31 2 *", f"day-of-month: '31' never falls in month '2', {NEVER}"),
        ("0 9 31 4,6,9,11 *", f"day-of-month: '31' never falls in month '4,6,9,11', {NEVER}"),
        # ANDed with a day-of-week that starts with '*': still no such day, on any weekday.
        ("0 9 30 2 */2", f"day-of-month: '30' never falls in month '2', {NEVER}"),
        ("0 9 30,31 feb */7", f"day-of-month: '30,31' never falls in month 'feb', {NEVER}"),
    ],
)
def test_parse_errors(expr: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:  # noqa: PT011 (the message is compared whole below)
        parse_cron(expr)
    assert str(raised.value) == message


def test_parse_lists_ranges_steps_and_names() -> None:
    cron = parse_cron("0,30 8-10 */10 jan,JUL 1-5/2")
    assert cron.minutes == (0, 30)
    assert cron.hours == (8, 9, 10)
    assert cron.days == frozenset({1, 11, 21, 31})
    assert cron.months == frozenset({1, 7})
    assert cron.weekdays == frozenset({1, 3, 5})
    assert cron.times == ((8, 0), (8, 30), (9, 0), (9, 30), (10, 0), (10, 30))
    assert cron.send_time is None
    assert parse_cron("  15   9 * * *  ").expr == "15 9 * * *"
    assert parse_cron("15 9 * * *").send_time == time(9, 15)
    assert parse_cron("5/20 * * * *").minutes == (5, 25, 45)


@pytest.mark.parametrize("sunday", ["0", "7", "sun", "5-7"])
def test_sunday_is_0_or_7(sunday: str) -> None:
    cron = parse_cron(f"0 9 * * {sunday}")
    assert 0 in cron.weekdays
    assert 7 not in cron.weekdays
    # 2026-11-22 is a Sunday.
    assert cron.next_after(utc(2026, 11, 21, 12), UTC) == utc(2026, 11, 22, 9)


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # As in Vixie cron: the 13th, and every Friday.
    cron = parse_cron("0 9 13 * 5")
    assert next_runs(cron, UTC, utc(2026, 11, 1), 4) == [
        utc(2026, 11, 6, 9),  # Friday
        utc(2026, 11, 13, 9),  # Friday the 13th: once
        utc(2026, 11, 20, 9),
        utc(2026, 11, 27, 9),
    ]
    # With '*' in one of them, both must match: Fridays in every month but the 13th's rule.
    assert next_runs(parse_cron("0 9 */2 * 5"), UTC, utc(2026, 11, 1), 2) == [
        utc(2026, 11, 13, 9),  # 13 is odd and a Friday
        utc(2026, 11, 27, 9),
    ]


def test_a_day_field_starting_with_a_star_counts_as_unrestricted() -> None:
    # Vixie cron reads the first character: "*/7" is days 1, 8, 15, 22, 29 ANDed with Sunday,
    # which in March happens in 2026 and then not until 2037 (issue 9).
    cron = parse_cron("0 9 */7 3 0")
    assert (cron.any_day, cron.any_weekday) == (True, False)
    assert next_runs(cron, UTC, utc(2026, 2, 1), 6) == [
        utc(2026, 3, 1, 9),
        utc(2026, 3, 8, 9),
        utc(2026, 3, 15, 9),
        utc(2026, 3, 22, 9),
        utc(2026, 3, 29, 9),
        utc(2037, 3, 1, 9),
    ]
    assert cron.next_after(utc(2026, 11, 18, 10, 20), UTC) == utc(2037, 3, 1, 9)
    # The same days spelled from a digit are restricted: either field matching is enough.
    assert next_runs(parse_cron("0 9 1-31/7 3 0"), UTC, utc(2026, 11, 18), 3) == [
        utc(2027, 3, 1, 9),  # a Monday, by day-of-month
        utc(2027, 3, 7, 9),  # a Sunday
        utc(2027, 3, 8, 9),
    ]
    # One set, two spellings, two meanings: "*,10" is every day ANDed with Tuesday; "10,*" is
    # every day ORed with Tuesday. 2026-11-17 is a Tuesday.
    assert next_runs(parse_cron("0 12 *,10 * 2"), UTC, utc(2026, 11, 18), 2) == [
        utc(2026, 11, 24, 12),
        utc(2026, 12, 1, 12),
    ]
    assert next_runs(parse_cron("0 12 10,* * 2"), UTC, utc(2026, 11, 18), 2) == [
        utc(2026, 11, 18, 12),
        utc(2026, 11, 19, 12),
    ]
    # A day-of-week starting with '*' ANDs too: the 13th, on Sundays, Wednesdays or Saturdays.
    assert next_runs(parse_cron("0 9 13 * */3"), UTC, utc(2026, 11, 18), 2) == [
        utc(2026, 12, 13, 9),  # a Sunday
        utc(2027, 1, 13, 9),  # a Wednesday
    ]


def test_february_29() -> None:
    leap_day = parse_cron("0 0 29 2 *")
    assert next_runs(leap_day, UTC, utc(2026, 11, 18), 2) == [utc(2028, 2, 29), utc(2032, 2, 29)]
    # 2100 is not a leap year.
    assert leap_day.next_after(utc(2096, 2, 29), UTC) == utc(2104, 2, 29)
    # A leap day on a Sunday: the longest gap any expression has, 40 years (2100 again).
    sunday = parse_cron("0 0 29 2 */7")
    assert next_runs(sunday, UTC, utc(2026, 11, 18), 3) == [
        utc(2032, 2, 29),
        utc(2060, 2, 29),
        utc(2088, 2, 29),
    ]
    assert sunday.next_after(utc(2088, 2, 29), UTC) == utc(2128, 2, 29)
    # Restricted both ways: February 29 or any Monday in February.
    assert next_runs(parse_cron("0 9 29 2 1"), UTC, utc(2027, 2, 20), 3) == [
        utc(2027, 2, 22, 9),
        utc(2028, 2, 7, 9),
        utc(2028, 2, 14, 9),
    ]
    assert parse_cron("0 9 29 2 1").next_after(utc(2028, 2, 28, 9), UTC) == utc(2028, 2, 29, 9)
    # February 30 never comes, but the Mondays of February do.
    assert parse_cron("0 9 30 2 1").next_after(utc(2026, 11, 18), UTC) == utc(2027, 2, 1, 9)


def test_every_month_day_on_sundays_is_found_as_the_calendar_has_it() -> None:
    # The sparsest days an expression can name: one month-day ANDed with Sunday ("*/7"), and the
    # 1st ("*/31") ANDed with one weekday. Each is checked against a plain walk of the calendar.
    start = date(2026, 11, 18)
    first_on: dict[tuple[int, int, int], date] = {}
    day = start
    while day.year < 2067:  # 40 years: the longest gap
        first_on.setdefault((day.month, day.day, day.isoweekday() % 7), day)
        day += timedelta(days=1)
    month_days = {(month, day_of_month) for month, day_of_month, _ in first_on}
    after = utc(2026, 11, 17, 23, 59)
    for month in range(1, 13):
        for day_of_month in range(1, 32):
            expr = f"0 0 {day_of_month} {month} */7"
            if (month, day_of_month) not in month_days:
                with pytest.raises(ValueError, match=f"^day-of-month: .* {NEVER}$"):
                    parse_cron(expr)
                continue
            found = parse_cron(expr).next_after(after, UTC)
            assert found.date() == first_on[(month, day_of_month, 0)], expr
        for weekday in range(7):
            found = parse_cron(f"0 0 */31 {month} {weekday}").next_after(after, UTC)
            assert found.date() == first_on[(month, 1, weekday)]


def test_next_after_is_strictly_after_and_reaches_rare_days() -> None:
    cron = parse_cron("0 9 * * *")
    assert cron.next_after(utc(2026, 11, 18, 9), UTC) == utc(2026, 11, 19, 9)
    assert cron.next_after(utc(2026, 11, 18, 8, 59, 59), UTC) == utc(2026, 11, 18, 9)
    assert parse_cron("0 0 29 2 *").next_after(utc(2097, 3, 1), UTC) == utc(2104, 2, 29)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="after must be timezone-aware"):
        parse_cron("0 9 * * *").next_after(datetime(2026, 1, 1), UTC)  # noqa: DTZ001
    with pytest.raises(ValueError, match="now must be timezone-aware"):
        birthday_targets(datetime(2026, 1, 1), NINE)  # noqa: DTZ001


# -- daylight saving time ------------------------------------------------------------------------


def test_berlin_spring_forward_gap_fires_at_the_change() -> None:
    # 2026-03-29: 02:00 CET becomes 03:00 CEST at 01:00 UTC; 02:30 never happens.
    cron = parse_cron("30 2 * * *")
    assert next_runs(cron, BERLIN, utc(2026, 3, 28, 12), 3) == [
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST, the first instant after the gap
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
        utc(2026, 3, 31, 0, 30),
    ]
    # Every time in the gap lands on the same instant: it fires once.
    assert next_runs(parse_cron("*/15 2 * * *"), BERLIN, utc(2026, 3, 28, 12), 2) == [
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 30, 0, 0),
    ]
    # Times around the gap are untouched.
    assert parse_cron("59 1 * * *").next_after(utc(2026, 3, 28, 12), BERLIN) == utc(
        2026, 3, 29, 0, 59
    )
    assert parse_cron("0 3 * * *").next_after(utc(2026, 3, 28, 12), BERLIN) == utc(
        2026, 3, 29, 1, 0
    )


def test_berlin_fall_back_fires_once_at_the_first_occurrence() -> None:
    # 2026-10-25: 03:00 CEST becomes 02:00 CET at 01:00 UTC; 02:30 happens twice.
    cron = parse_cron("30 2 * * *")
    assert next_runs(cron, BERLIN, utc(2026, 10, 24, 12), 2) == [
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST; not again at 02:30 CET (01:30 UTC)
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]
    # From inside the repeated hour, the second 02:30 is not a firing either.
    assert cron.next_after(utc(2026, 10, 25, 1, 15), BERLIN) == utc(2026, 10, 26, 1, 30)
    # Hourly: 02:00 fires at its first occurrence only.
    assert next_runs(parse_cron("0 * * * *"), BERLIN, utc(2026, 10, 24, 23, 30), 3) == [
        utc(2026, 10, 25, 0, 0),  # 02:00 CEST
        utc(2026, 10, 25, 2, 0),  # 03:00 CET
        utc(2026, 10, 25, 3, 0),
    ]


def test_new_york_spring_forward_and_fall_back() -> None:
    # 2026-03-08: 02:00 EST becomes 03:00 EDT at 07:00 UTC.
    assert next_runs(parse_cron("30 2 * * *"), NEW_YORK, utc(2026, 3, 7, 12), 2) == [
        utc(2026, 3, 8, 7, 0),
        utc(2026, 3, 9, 6, 30),
    ]
    # 2026-11-01: 02:00 EDT becomes 01:00 EST at 06:00 UTC; 01:30 happens twice.
    assert next_runs(parse_cron("30 1 * * *"), NEW_YORK, utc(2026, 10, 31, 12), 2) == [
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT
        utc(2026, 11, 2, 6, 30),  # 01:30 EST
    ]


def test_local_instant() -> None:
    assert local_instant(datetime(2026, 3, 29, 2, 30), BERLIN) == utc(2026, 3, 29, 1)  # noqa: DTZ001
    assert local_instant(datetime(2026, 10, 25, 2, 30), BERLIN) == utc(2026, 10, 25, 0, 30)  # noqa: DTZ001
    assert local_instant(datetime(2026, 7, 1, 9), BERLIN) == utc(2026, 7, 1, 7)  # noqa: DTZ001


def test_latest_at_or_before() -> None:
    weekly = parse_cron("0 9 * * 1")
    assert weekly.latest_at_or_before(utc(2026, 11, 23, 9), UTC) == utc(2026, 11, 23, 9)
    assert weekly.latest_at_or_before(utc(2026, 11, 23, 8, 59), UTC) == utc(2026, 11, 16, 9)
    assert weekly.latest_at_or_before(utc(2026, 11, 22, 23), UTC) == utc(2026, 11, 16, 9)
    # Monthly: nothing in the last 8 days.
    assert parse_cron("0 9 1 * *").latest_at_or_before(utc(2026, 11, 20), UTC) is None
    # In the repeated hour: the first 02:30 (00:30 UTC) is the latest, though its wall time is
    # after the 02:15 CET of `at`.
    daily = parse_cron("30 2 * * *")
    assert daily.latest_at_or_before(utc(2026, 10, 25, 1, 15), BERLIN) == utc(2026, 10, 25, 0, 30)
    assert daily.latest_at_or_before(utc(2026, 3, 29, 1, 0), BERLIN) == utc(2026, 3, 29, 1, 0)
    assert daily.latest_at_or_before(utc(2026, 3, 29, 0, 59), BERLIN) == utc(2026, 3, 28, 1, 30)


# -- birthdays -----------------------------------------------------------------------------------


def test_the_same_instant_is_another_date_across_the_date_line() -> None:
    zones = ["Pacific/Kiritimati", "Etc/GMT+12"]  # UTC+14 and UTC-12: 26 hours apart
    # 19:00 UTC: 09:00 on June 16 at Kiritimati, 07:00 on June 15 at GMT-12.
    assert birthday_targets(utc(2026, 6, 15, 19), NINE, zones) == [
        BirthdayTarget(date(2026, 6, 16), (616,), ("Pacific/Kiritimati",))
    ]
    # 21:00 UTC: both are at or past nine, on different dates.
    assert birthday_targets(utc(2026, 6, 15, 21), NINE, zones) == [
        BirthdayTarget(date(2026, 6, 15), (615,), ("Etc/GMT+12",)),
        BirthdayTarget(date(2026, 6, 16), (616,), ("Pacific/Kiritimati",)),
    ]
    # 10:00 UTC the next day: June 15 is not over at GMT-12 (22:00), while Kiritimati is at
    # 00:00 on June 17, before its send time.
    assert birthday_targets(utc(2026, 6, 16, 10), NINE, zones) == [
        BirthdayTarget(date(2026, 6, 15), (615,), ("Etc/GMT+12",)),
    ]


def test_send_time_is_inclusive_to_the_minute() -> None:
    # Berlin in summer is UTC+2.
    assert birthday_targets(utc(2026, 7, 1, 6, 59), NINE, ["Europe/Berlin"]) == []
    assert birthday_targets(utc(2026, 7, 1, 6, 59, 59), NINE, ["Europe/Berlin"]) == []
    assert birthday_targets(utc(2026, 7, 1, 7, 0), NINE, ["Europe/Berlin"]) == [
        BirthdayTarget(date(2026, 7, 1), (701,), ("Europe/Berlin",))
    ]
    assert birthday_targets(utc(2026, 7, 1, 21, 59), NINE, ["Europe/Berlin"]) == [
        BirthdayTarget(date(2026, 7, 1), (701,), ("Europe/Berlin",))
    ]
    assert birthday_targets(utc(2026, 7, 1, 22, 0), NINE, ["Europe/Berlin"]) == []  # July 2, 00:00


def test_half_hour_zone_is_caught_by_the_next_hourly_run() -> None:
    # Kolkata is UTC+05:30: 09:00 there is 03:30 UTC, between two hourly runs.
    assert birthday_targets(utc(2026, 5, 4, 3), NINE, ["Asia/Kolkata"]) == []  # 08:30
    assert birthday_targets(utc(2026, 5, 4, 4), NINE, ["Asia/Kolkata"]) == [  # 09:30
        BirthdayTarget(date(2026, 5, 4), (504,), ("Asia/Kolkata",))
    ]


def test_february_29_on_february_28_in_other_years() -> None:
    assert birthday_targets(utc(2027, 2, 28, 12), NINE, ["UTC"]) == [
        BirthdayTarget(date(2027, 2, 28), (228, 229), ("UTC",))
    ]
    assert birthday_targets(utc(2028, 2, 28, 12), NINE, ["UTC"]) == [
        BirthdayTarget(date(2028, 2, 28), (228,), ("UTC",))
    ]
    assert birthday_targets(utc(2028, 2, 29, 12), NINE, ["UTC"]) == [
        BirthdayTarget(date(2028, 2, 29), (229,), ("UTC",))
    ]
    assert birthday_targets(utc(2027, 3, 1, 12), NINE, ["UTC"]) == [
        BirthdayTarget(date(2027, 3, 1), (301,), ("UTC",))
    ]


def test_zones_are_grouped_by_local_date_and_unknown_names_left_out() -> None:
    targets = birthday_targets(
        utc(2026, 6, 15, 12),
        NINE,
        ["Europe/Berlin", "Europe/Paris", "UTC", "Asia/Tokyo", "America/New_York", "Mars/Base"],
    )
    assert targets == [
        BirthdayTarget(
            date(2026, 6, 15), (615,), ("Asia/Tokyo", "Europe/Berlin", "Europe/Paris", "UTC")
        ),
    ]  # Tokyo is at 21:00; New York at 08:00 is not yet due


def test_all_zones_by_default() -> None:
    now = utc(2026, 6, 15, 21)
    targets = birthday_targets(now, NINE)
    assert [t.local_date for t in targets] == [date(2026, 6, 15), date(2026, 6, 16)]
    selected = {zone for t in targets for zone in t.zones}
    assert {"Etc/GMT+12", "Europe/Berlin", "America/New_York", "Pacific/Kiritimati"} <= selected
    assert "Australia/Sydney" not in selected  # 07:00 on June 16
    assert len(all_zones()) > 400


# -- activation reminders ------------------------------------------------------------------------


def test_activation_window() -> None:
    assert activation_window(utc(2026, 11, 18, 10), 3) == (
        utc(2026, 11, 13, 10),
        utc(2026, 11, 15, 10),
    )


# -- weekly report -------------------------------------------------------------------------------

MONDAY_NINE = parse_cron("0 9 * * 1")


def test_weekly_report_due_from_monday_nine_until_the_week_ends() -> None:
    last_week = WeeklyReport("2026-W47", utc(2026, 11, 16), utc(2026, 11, 23))
    assert weekly_report_due(utc(2026, 11, 23, 8, 59), MONDAY_NINE, UTC) is None
    assert weekly_report_due(utc(2026, 11, 23, 9), MONDAY_NINE, UTC) == last_week
    # A run missed on Monday is caught up later in the week, up to Sunday night.
    assert weekly_report_due(utc(2026, 11, 26, 15), MONDAY_NINE, UTC) == last_week
    assert weekly_report_due(utc(2026, 11, 29, 23, 59), MONDAY_NINE, UTC) == last_week
    # The Sunday before the first firing belongs to the week before: its report was W46.
    assert weekly_report_due(utc(2026, 11, 22, 23), MONDAY_NINE, UTC) == WeeklyReport(
        "2026-W46", utc(2026, 11, 9), utc(2026, 11, 16)
    )


def test_weekly_report_in_the_schedules_zone() -> None:
    # Monday 09:00 in Berlin (CET, UTC+1) is 08:00 UTC; the week runs from midnight Berlin time.
    assert weekly_report_due(utc(2026, 11, 23, 7, 59), MONDAY_NINE, BERLIN) is None
    assert weekly_report_due(utc(2026, 11, 23, 8), MONDAY_NINE, BERLIN) == WeeklyReport(
        "2026-W47", utc(2026, 11, 15, 23), utc(2026, 11, 22, 23)
    )
    # The week of the clocks going back is 169 hours long.
    report = weekly_report_due(utc(2026, 10, 26, 8), MONDAY_NINE, BERLIN)
    assert report == WeeklyReport("2026-W43", utc(2026, 10, 18, 22), utc(2026, 10, 25, 23))


@pytest.mark.parametrize(
    ("now", "period", "start", "end"),
    [
        # 2026 has 53 ISO weeks (it starts on a Thursday).
        (utc(2026, 12, 28, 9), "2026-W52", utc(2026, 12, 21), utc(2026, 12, 28)),
        (utc(2027, 1, 4, 9), "2026-W53", utc(2026, 12, 28), utc(2027, 1, 4)),
        (utc(2027, 1, 11, 9), "2027-W01", utc(2027, 1, 4), utc(2027, 1, 11)),
        # ISO week 1 of 2026 starts on Monday 2025-12-29.
        (utc(2026, 1, 5, 9), "2026-W01", utc(2025, 12, 29), utc(2026, 1, 5)),
        # 2025 has 52: its last week ends on 2025-12-28.
        (utc(2025, 12, 29, 9), "2025-W52", utc(2025, 12, 22), utc(2025, 12, 29)),
    ],
)
def test_weekly_report_period_across_the_year_boundary(
    now: datetime, period: str, start: datetime, end: datetime
) -> None:
    assert weekly_report_due(now, MONDAY_NINE, UTC) == WeeklyReport(period, start, end)


# -- next runs -----------------------------------------------------------------------------------


def test_next_runs() -> None:
    now = utc(2026, 11, 18, 10, 20)
    assert next_hourly_run(now) == utc(2026, 11, 18, 11)
    assert next_hourly_run(utc(2026, 11, 18, 10)) == utc(2026, 11, 18, 11)
    assert next_hourly_run(datetime(2026, 11, 18, 10, 20, tzinfo=ZoneInfo("Asia/Kolkata"))) == utc(
        2026, 11, 18, 5
    )
    daily = parse_cron("0 9 * * *")
    assert next_run("birthday", enabled=True, cron=daily, tz=UTC_ZONE, now=now) == utc(
        2026, 11, 18, 11
    )
    assert next_run("activation_reminder", enabled=True, cron=None, tz=UTC_ZONE, now=now) == utc(
        2026, 11, 18, 11
    )
    assert next_run("weekly_report", enabled=True, cron=MONDAY_NINE, tz=BERLIN, now=now) == utc(
        2026, 11, 23, 8
    )
    assert next_run("weekly_report", enabled=False, cron=MONDAY_NINE, tz=BERLIN, now=now) is None
    assert next_runs(MONDAY_NINE, BERLIN, now, 2) == [utc(2026, 11, 23, 8), utc(2026, 11, 30, 8)]
    assert next_runs(MONDAY_NINE, BERLIN, now, 0) == []
