"""A tenant's recurring jobs: reading their settings and replacing them, with what each job takes.

The request body is checked field by field by its schema; what depends on which job it is for
(a cron for the birthday, days for the activation reminder, recipients for the report) is
checked here.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.errors import FieldError, NotFound, ValidationFailed
from mailsvc.kit.time import Clock, utcnow
from mailsvc.models import SCHEDULE_NAMES
from mailsvc.schedules import schemas, timing
from mailsvc.schedules.repository import (
    EffectiveSchedule,
    ScheduleRepository,
    effective_for_tenant,
)


async def list_schedules(
    session: AsyncSession, tenant_id: uuid.UUID, *, clock: Clock = utcnow
) -> schemas.ScheduleList:
    """Every job of the tenant, in SCHEDULE_NAMES order, with its next run after `clock()`."""
    now = clock()
    effective = await effective_for_tenant(session, tenant_id)
    return schemas.ScheduleList(data=[schemas.Schedule.of(s, now) for s in effective])


async def put_schedule(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    name: str,
    update: schemas.ScheduleUpdate,
    *,
    clock: Clock = utcnow,
) -> schemas.Schedule:
    """Replace the tenant's settings for the job `name` whole: what `update` leaves out takes
    its default. NotFound for a job that does not exist, ValidationFailed listing every setting
    the job does not take or needs and lacks."""
    if name not in SCHEDULE_NAMES:
        raise NotFound(f"no schedule named {name!r}; there are {', '.join(SCHEDULE_NAMES)}")
    errors = problems(name, update)
    if errors:
        raise ValidationFailed.listing(errors)
    row = await ScheduleRepository(session).put(tenant_id, name, **_columns(update))
    return schemas.Schedule.of(EffectiveSchedule.of(tenant_id, name, row), clock())


def _columns(update: schemas.ScheduleUpdate) -> dict[str, Any]:
    """The stored row: every setting, so a PUT replaces the previous one whole."""
    return {
        "enabled": update.enabled,
        "cron": update.cron,
        "days": update.days,
        "timezone": update.timezone,
        "template": update.template,
        "recipients": update.recipients,
    }


def problems(name: str, update: schemas.ScheduleUpdate) -> list[FieldError]:
    """What the job `name` does not take of `update`, or needs and lacks."""
    return [
        *_takes_no_cron(name, update),
        *_days_problems(name, update),
        *_birthday_cron_problems(name, update),
        *_recipient_problems(name, update),
    ]


def _takes_no_cron(name: str, update: schemas.ScheduleUpdate) -> list[FieldError]:
    if name == "activation_reminder" and update.cron is not None:
        message = "activation_reminder runs a number of days after sign-up: set days, not cron"
        return [FieldError(("body", "cron"), message)]
    return []


def _birthday_cron_problems(name: str, update: schemas.ScheduleUpdate) -> list[FieldError]:
    # Birthdays are per contact: the day comes from the contact, only the time of day from cron.
    if name != "birthday" or update.cron is None:
        return []
    cron = update.cron
    if cron.split()[2:] == ["*", "*", "*"] and timing.parse_cron(cron).send_time is not None:
        return []
    message = (
        "birthday sends on each contact's birthday at one time of day: give "
        "'minute hour * * *', such as '0 9 * * *'"
    )
    return [FieldError(("body", "cron"), message)]


def _days_problems(name: str, update: schemas.ScheduleUpdate) -> list[FieldError]:
    if name != "activation_reminder" and update.days is not None:
        return [FieldError(("body", "days"), f"only activation_reminder takes days, not {name}")]
    return []


def _recipient_problems(name: str, update: schemas.ScheduleUpdate) -> list[FieldError]:
    if name != "weekly_report" and update.recipients:
        message = f"only weekly_report has recipients: {name} mails the contacts"
        return [FieldError(("body", "recipients"), message)]
    if name == "weekly_report" and update.enabled and not update.recipients:
        message = "at least one address is required to enable weekly_report"
        return [FieldError(("body", "recipients"), message)]
    return []
