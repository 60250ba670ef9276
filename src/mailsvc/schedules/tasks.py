"""Celery tasks of the schedules domain: each recurring job, run hourly by beat."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.kit.time import utcnow
from mailsvc.schedules import jobs
from mailsvc.worker import bridge
from mailsvc.worker.app import celery_app

Job = Callable[..., Awaitable[int]]


def _run(job: Job) -> int:
    runtime = bridge.runtime()
    now: datetime = utcnow()

    async def run(session: AsyncSession) -> int:
        return await job(session, now=now)

    return runtime.run(runtime.in_transaction(run))


@celery_app.task(name="schedules.birthdays")
def birthdays() -> int:
    """Birthday emails for contacts whose local day and send time have come."""
    return _run(jobs.run_birthdays)


@celery_app.task(name="schedules.activation_reminders")
def activation_reminders() -> int:
    """A reminder to contacts who signed up N days ago and have not activated."""
    return _run(jobs.run_activation_reminders)


@celery_app.task(name="schedules.weekly_reports")
def weekly_reports() -> int:
    """Last week's figures to each tenant's admins, when their schedule says."""
    return _run(jobs.run_weekly_reports)
