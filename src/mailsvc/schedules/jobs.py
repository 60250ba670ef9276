"""The recurring jobs Celery Beat runs: birthdays, activation reminders, the weekly report.

Each job selects its recipients by index, plans one message each, and records the sends in the
ledger in the same transaction; only the sends the ledger accepted are stored and queued. So a
job run twice, or by two beats at once, mails nobody twice. The messages are left unrendered:
the worker renders each template when it sends it, and a template that cannot render fails
that message, recorded, not the job. Every job takes `now`, so tests drive it with a clock.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.auth.service import TenantInfo, tenant_infos
from mailsvc.contacts.service import contact_variables
from mailsvc.messages import schemas as message_schemas
from mailsvc.messages import service as messages
from mailsvc.models import Message
from mailsvc.schedules import repository, timing
from mailsvc.schedules.ledger import PlannedSend, RecurringSendRepository
from mailsvc.sending.lanes import Lane

log = logging.getLogger(__name__)

BIRTHDAY = "birthday"
ACTIVATION_REMINDER = "activation_reminder"
WEEKLY_REPORT = "weekly_report"
SCHEDULED_BATCH = 50  # ids per send job on the scheduled queue


@dataclass(frozen=True)
class Planned:
    tenant_id: uuid.UUID
    email: str
    name: str | None
    period: str
    template: str
    variables: dict[str, Any]


async def _send(
    session: AsyncSession, schedule: str, planned: Sequence[Planned], *, now: datetime
) -> int:
    """Store and queue the planned sends the ledger has not seen; returns how many."""
    if not planned:
        return 0
    tenants = await tenant_infos(session, {p.tenant_id for p in planned})
    rows: list[tuple[Message, Planned]] = []
    for plan in planned:
        tenant: TenantInfo | None = tenants.get(plan.tenant_id)
        if tenant is None:  # deleted meanwhile
            continue
        if tenant.default_sender is None:  # one tenant's gap must not stop everyone's mail
            log.warning(
                "recurring email skipped: the tenant has no default sender",
                extra={"fields": {"tenant": str(tenant.id), "schedule": schedule}},
            )
            continue
        message = messages.templated_message(
            tenant,
            template=plan.template,
            to=message_schemas.Address.model_construct(email=plan.email, name=plan.name),
            variables=plan.variables,
            lane=Lane.scheduled,
            tags=[schedule],
            clock=lambda: now,
        )
        rows.append((message, plan))
    ledger = [PlannedSend(m.tenant_id, m.recipients[0], p.period, m.id) for m, p in rows]
    fresh = await RecurringSendRepository(session).claim(schedule, ledger)
    accepted = [message for message, _ in rows if message.id in fresh]
    await messages.accept_messages(session, accepted, batch_size=SCHEDULED_BATCH)
    return len(accepted)


def _unusable(schedule: repository.EffectiveSchedule, exc: Exception) -> None:
    """A row the API would refuse today (an older release's, or edited by hand) is skipped:
    one tenant's bad row must not stop everyone's mail."""
    log.warning(
        "recurring email skipped: the schedule cannot run (%s)",
        exc,
        extra={"fields": {"tenant": str(schedule.tenant_id), "schedule": schedule.name}},
    )


def _send_time(cron: str | None) -> time:
    """The local time of day a daily schedule sends at: the earliest its cron names."""
    parsed = timing.parse_cron(cron or timing.BIRTHDAY_CRON)
    return time(min(parsed.hours), min(parsed.minutes))


async def run_birthdays(session: AsyncSession, *, now: datetime) -> int:
    """Contacts whose birthday it is in their own time zone, once the send time has come."""
    schedules = await repository.effective_schedules(session, BIRTHDAY)
    by_time: dict[time, list[repository.EffectiveSchedule]] = defaultdict(list)
    for schedule in schedules:
        try:
            by_time[_send_time(schedule.cron)].append(schedule)
        except ValueError as exc:
            _unusable(schedule, exc)
    sent = 0
    for send_time, group in by_time.items():
        templates = {s.tenant_id: s.template for s in group}
        targets = timing.birthday_targets(now, send_time)
        contacts = await repository.birthday_contacts(
            session, targets, list(templates), unsent_only=True
        )
        planned = [
            Planned(
                tenant_id=c.tenant_id,
                email=c.email,
                name=c.name,
                period=str(c.local_date.year),
                template=templates[c.tenant_id],
                variables={"contact": contact_variables(c)},
            )
            for c in contacts
        ]
        sent += await _send(session, BIRTHDAY, planned, now=now)
    return sent


async def run_activation_reminders(session: AsyncSession, *, now: datetime) -> int:
    """Contacts signed up N days ago who have not activated: one reminder per sign-up."""
    schedules = await repository.effective_schedules(session, ACTIVATION_REMINDER)
    if not schedules:
        return 0
    by_tenant = {s.tenant_id: s for s in schedules}
    windows = [
        (s.tenant_id, *timing.activation_window(now, s.days or timing.ACTIVATION_DAYS))
        for s in schedules
    ]
    contacts = await repository.unactivated_contacts(session, windows)
    planned = [
        Planned(
            tenant_id=c.tenant_id,
            email=c.email,
            name=c.name,
            period=c.signed_up_at.isoformat(),
            template=by_tenant[c.tenant_id].template,
            variables={
                "contact": contact_variables(c),
                "data": {"days": by_tenant[c.tenant_id].days or timing.ACTIVATION_DAYS},
            },
        )
        for c in contacts
    ]
    return await _send(session, ACTIVATION_REMINDER, planned, now=now)


async def run_weekly_reports(session: AsyncSession, *, now: datetime) -> int:
    """Last week's figures to each tenant's admin addresses, on the schedule's day and time."""
    planned: list[Planned] = []
    for schedule in await repository.effective_schedules(session, WEEKLY_REPORT):
        try:
            tz = ZoneInfo(schedule.timezone)
            cron = timing.parse_cron(schedule.cron or timing.WEEKLY_REPORT_CRON)
            due = timing.weekly_report_due(now, cron, tz)
        except (ValueError, ZoneInfoNotFoundError) as exc:
            _unusable(schedule, exc)
            continue
        if due is None:  # (a schedule without recipients is not enabled)
            continue
        period, start, end = due
        figures = await repository.weekly_figures(session, schedule.tenant_id, start, end)
        report = {
            "week": period,
            "start": start.astimezone(tz).date().isoformat(),
            "end": (end.astimezone(tz).date() - timedelta(days=1)).isoformat(),  # its Sunday
            "timezone": schedule.timezone,
            **figures,
        }
        planned += [
            Planned(
                tenant_id=schedule.tenant_id,
                email=recipient,
                name=None,
                period=period,
                template=schedule.template,
                variables={"report": report},
            )
            for recipient in schedule.recipients
        ]
    return await _send(session, WEEKLY_REPORT, planned, now=now)
