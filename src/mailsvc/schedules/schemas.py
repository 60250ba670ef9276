"""Request and response bodies of the schedules API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mailsvc.kit.addresses import MAX_RECIPIENTS, normalise_email
from mailsvc.kit.time import check_time_zone
from mailsvc.schedules import timing
from mailsvc.schedules.repository import EffectiveSchedule

ScheduleName = Literal["birthday", "activation_reminder", "weekly_report"]
TEMPLATE_NAME = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


def _check_cron(value: str) -> str:
    return timing.parse_cron(value).expr


def _unique(addresses: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for address in addresses:
        seen.setdefault(address.lower(), address)
    return list(seen.values())


Recipient = Annotated[str, Field(max_length=320), AfterValidator(normalise_email)]


class ScheduleUpdate(BaseModel):
    """A tenant's settings for one recurring job. What is left out takes its default."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool
    cron: (
        Annotated[
            str,
            Field(
                max_length=200,
                description='"minute hour day-of-month month day-of-week". birthday takes '
                'a time of day only ("30 8 * * *"); activation_reminder takes days instead.',
            ),
            AfterValidator(_check_cron),
        ]
        | None
    ) = None
    days: Annotated[
        int | None,
        Field(ge=1, le=365, description="activation_reminder: days after sign-up (default 3)."),
    ] = None
    timezone: Annotated[
        str,
        Field(max_length=64, description="The zone the cron is read in (weekly_report)."),
        AfterValidator(check_time_zone),
    ] = "UTC"
    template: Annotated[
        str | None,
        Field(pattern=TEMPLATE_NAME, description="A template name; null: the built-in one."),
    ] = None
    recipients: Annotated[
        list[Recipient],
        Field(max_length=MAX_RECIPIENTS, description="weekly_report: who receives it."),
        AfterValidator(_unique),
    ] = Field(default_factory=list)


class Schedule(BaseModel):
    """One recurring job of the tenant: its settings, defaults filled in, and its next run."""

    name: ScheduleName
    enabled: bool
    cron: str | None
    days: int | None
    timezone: str
    template: str
    recipients: list[str]
    next_run: datetime | None = Field(
        description="When the job next sends for this tenant (UTC); null when it is disabled."
    )
    description: str

    @classmethod
    def of(cls, schedule: EffectiveSchedule, now: datetime) -> Schedule:
        cron: timing.Cron | None = None
        try:
            cron = timing.parse_cron(schedule.cron) if schedule.cron else None
            next_run = timing.next_run(
                schedule.name,
                enabled=schedule.enabled,
                cron=cron,
                tz=ZoneInfo(schedule.timezone),
                now=now,
            )
            description = describe(schedule, cron)
        except (ValueError, ZoneInfoNotFoundError) as exc:
            # A row this API would refuse today (stored by an older release, or by hand) is still
            # listed, with why it cannot run, rather than failing the tenant's whole list.
            next_run = None
            description = (
                f"{describe(schedule, cron)} It does not run until its settings are saved "
                f"again: cron {schedule.cron!r} in time zone {schedule.timezone!r}: {exc}"
            )
        return cls(
            name=schedule.name,
            enabled=schedule.enabled,
            cron=schedule.cron,
            days=schedule.days,
            timezone=schedule.timezone,
            template=schedule.template,
            recipients=schedule.recipients,
            next_run=next_run,
            description=description,
        )


class ScheduleList(BaseModel):
    data: list[Schedule]


_WEEKDAYS = ("Sundays", "Mondays", "Tuesdays", "Wednesdays", "Thursdays", "Fridays", "Saturdays")


def _when(cron: timing.Cron) -> str:
    """ "on Mondays at 09:00" for the usual shapes; the expression itself for the rest."""
    at = cron.send_time
    fields = cron.expr.split()
    if at is not None and fields[2:4] == ["*", "*"]:
        if fields[4] == "*":
            return f"every day at {at:%H:%M}"
        if len(cron.weekdays) == 1:
            return f"on {_WEEKDAYS[next(iter(cron.weekdays))]} at {at:%H:%M}"
    return f"at the times of cron '{cron.expr}'"


def describe(schedule: EffectiveSchedule, cron: timing.Cron | None) -> str:
    """What the job does, in a sentence."""
    if schedule.name == "birthday":
        at = cron.send_time if cron else None
        time_of_day = f"at {at:%H:%M}" if at else f"at the times of cron '{schedule.cron}'"
        return (
            f"A birthday email {time_of_day} on each contact's birthday, in the contact's own "
            "time zone; birthdays on February 29 are celebrated on February 28 in other years."
        )
    if schedule.name == "activation_reminder":
        days = f"{schedule.days} day{'s' if schedule.days != 1 else ''}"
        return f"A reminder {days} after a contact signs up, while they have not activated."
    when = _when(cron) if cron else "weekly"
    return (
        f"Last week's figures (Monday to Sunday, {schedule.timezone}) to the recipients, "
        f"{when} ({schedule.timezone})."
    )
