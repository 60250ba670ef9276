"""Celery tasks of the schedules domain: each recurring job, run hourly by beat."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from celery import Task, shared_task
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.kit.time import utcnow
from mailsvc.schedules import jobs
from mailsvc.sending.runtime import runtime_of

Job = Callable[..., Awaitable[int]]


def _run(task: Task, job: Job) -> int:
    runtime = runtime_of(task)
    now: datetime = utcnow()

    async def run(session: AsyncSession) -> int:
        return await job(session, now=now)

    return runtime.run(runtime.in_transaction(run))


@shared_task(name="schedules.birthdays", bind=True)
def birthdays(self: Task) -> int:
    """Birthday emails for contacts whose local day and send time have come."""
    return _run(self, jobs.run_birthdays)


@shared_task(name="schedules.activation_reminders", bind=True)
def activation_reminders(self: Task) -> int:
    """A reminder to contacts who signed up N days ago and have not activated."""
    return _run(self, jobs.run_activation_reminders)


@shared_task(name="schedules.weekly_reports", bind=True)
def weekly_reports(self: Task) -> int:
    """Last week's figures to each tenant's admins, when their schedule says."""
    return _run(self, jobs.run_weekly_reports)
