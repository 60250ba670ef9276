"""The recurring jobs against real PostgreSQL: who they pick, and exactly once per period, even
when a job runs twice or two runs race. Time comes from the `now` each job is given."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest_asyncio
from sqlalchemy import select

from mailsvc.auth.service import create_tenant
from mailsvc.db import Database
from mailsvc.models import Contact, Message, RecurringSend, Schedule, Tenant
from mailsvc.schedules import jobs
from tests.factories import queue_messages

Job = Callable[..., Awaitable[int]]


async def run(database: Database, job: Job, now: datetime) -> int:
    async with database.transaction() as session:
        return await job(session, now=now)


async def race(database: Database, job: Job, now: datetime) -> list[int]:
    return list(await asyncio.gather(run(database, job, now), run(database, job, now)))


async def sent_to(database: Database, tenant: Tenant, template: str) -> Counter[str]:
    async with database.transaction() as session:
        rows = await session.execute(
            select(Message.recipients).where(
                Message.tenant_id == tenant.id, Message.template == template
            )
        )
        return Counter(r[0][0] for r in rows)


async def add_contacts(database: Database, tenant: Tenant, *contacts: dict[str, Any]) -> None:
    async with database.transaction() as session:
        session.add_all(Contact(tenant_id=tenant.id, attributes={}, **c) for c in contacts)


@pytest_asyncio.fixture
async def make_live_tenant_without_sender(live_database: Database) -> Tenant:
    """A tenant row from before default senders were required."""
    async with live_database.transaction() as session:
        tenant = await create_tenant(
            session, name=f"nosender-{secrets.token_hex(4)}", domains=["example.com"]
        )
        tenant.default_sender = None
    return tenant


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


async def test_birthdays_in_each_contacts_own_zone_once_a_year(
    live_database: Database, live_tenant: Tenant
) -> None:
    await add_contacts(
        live_database,
        live_tenant,
        {
            "email": "kiri@example.net",
            "birthday": date(1990, 11, 22),
            "timezone": "Pacific/Kiritimati",
        },
        {"email": "baker@example.net", "birthday": date(1985, 11, 21), "timezone": "Etc/GMT+12"},
        {
            "email": "london@example.net",
            "birthday": date(2000, 11, 21),
            "timezone": "Europe/London",
        },
        {"email": "leap@example.net", "birthday": date(2004, 2, 29), "timezone": "UTC"},
        {"email": "none@example.net", "birthday": None, "timezone": "UTC"},
    )
    # 08:00 in London: nobody's 09:00 has come on their birthday.
    await run(live_database, jobs.run_birthdays, at(2026, 11, 21, 8))
    assert await sent_to(live_database, live_tenant, "birthday") == Counter()
    # 19:00 UTC is 09:00 on Nov 22 in UTC+14 and 19:00 on Nov 21 in London; UTC-12 is at 07:00.
    await race(live_database, jobs.run_birthdays, at(2026, 11, 21, 19))
    assert await sent_to(live_database, live_tenant, "birthday") == Counter(
        {"kiri@example.net": 1, "london@example.net": 1}
    )
    # 21:00 UTC is 09:00 on Nov 21 in UTC-12; the others were mailed this year already.
    await race(live_database, jobs.run_birthdays, at(2026, 11, 21, 21))
    await run(live_database, jobs.run_birthdays, at(2026, 11, 21, 23))
    assert await sent_to(live_database, live_tenant, "birthday") == Counter(
        {"kiri@example.net": 1, "london@example.net": 1, "baker@example.net": 1}
    )
    # Feb 29 is mailed on Feb 28 in a year without one, and once.
    await run(live_database, jobs.run_birthdays, at(2027, 2, 28, 9))
    await run(live_database, jobs.run_birthdays, at(2027, 3, 1, 9))
    # A year later, London again: a new period.
    await run(live_database, jobs.run_birthdays, at(2027, 11, 21, 10))
    assert await sent_to(live_database, live_tenant, "birthday") == Counter(
        {
            "kiri@example.net": 1,
            "london@example.net": 2,
            "baker@example.net": 1,
            "leap@example.net": 1,
        }
    )
    async with live_database.transaction() as session:
        ledger = (
            await session.execute(
                select(RecurringSend.recipient, RecurringSend.period).where(
                    RecurringSend.tenant_id == live_tenant.id
                )
            )
        ).all()
        message = (
            await session.execute(
                select(Message).where(
                    Message.tenant_id == live_tenant.id,
                    Message.recipients.contains(["kiri@example.net"]),
                )
            )
        ).scalar_one()
    assert sorted(tuple(row) for row in ledger) == [
        ("baker@example.net", "2026"),
        ("kiri@example.net", "2026"),
        ("leap@example.net", "2027"),
        ("london@example.net", "2026"),
        ("london@example.net", "2027"),
    ]
    # Left for the worker to render; the scheduled lane; the contact's fields as variables.
    assert (message.subject, message.lane, message.status) == (None, "scheduled", "queued")
    assert message.variables is not None
    assert message.variables["contact"]["email"] == "kiri@example.net"
    assert message.variables["tenant"] == {"name": live_tenant.name}


async def test_a_disabled_birthday_schedule_sends_nothing(
    live_database: Database, live_tenant: Tenant
) -> None:
    await add_contacts(
        live_database,
        live_tenant,
        {"email": "off@example.net", "birthday": date(1990, 6, 1), "timezone": "UTC"},
    )
    async with live_database.transaction() as session:
        session.add(
            Schedule(tenant_id=live_tenant.id, name="birthday", enabled=False, recipients=[])
        )
    await run(live_database, jobs.run_birthdays, at(2026, 6, 1, 12))
    assert await sent_to(live_database, live_tenant, "birthday") == Counter()


async def test_weekly_report_once_per_week_to_each_admin(
    live_database: Database, live_tenant: Tenant
) -> None:
    async with live_database.transaction() as session:
        session.add(
            Schedule(
                tenant_id=live_tenant.id,
                name="weekly_report",
                enabled=True,
                timezone="Europe/Berlin",
                recipients=["ops@example.net", "boss@example.net"],
            )
        )
    async with live_database.transaction() as session:
        await queue_messages(session, live_tenant, 3)
    today = datetime.now(UTC).date()
    monday = date.fromordinal(today.toordinal() - today.weekday() + 7)
    # Monday 08:59 in Berlin: not yet; 09:00: due.
    after = datetime.combine(monday, time(9), ZoneInfo("Europe/Berlin")).astimezone(UTC)
    before = after - timedelta(minutes=1)
    assert await run(live_database, jobs.run_weekly_reports, before) == 0
    await race(live_database, jobs.run_weekly_reports, after)
    await run(live_database, jobs.run_weekly_reports, after.replace(hour=15))
    assert await sent_to(live_database, live_tenant, "weekly_report") == Counter(
        {"ops@example.net": 1, "boss@example.net": 1}
    )
    async with live_database.transaction() as session:
        report = (
            (
                await session.execute(
                    select(Message.variables).where(
                        Message.tenant_id == live_tenant.id, Message.template == "weekly_report"
                    )
                )
            )
            .scalars()
            .first()
        )
    assert report is not None
    figures = report["report"]
    year, week, _ = today.isocalendar()
    assert figures["week"] == f"{year}-W{week:02d}"
    week_start = today - timedelta(days=today.weekday())
    assert (figures["start"], figures["end"]) == (
        week_start.isoformat(),
        (week_start + timedelta(days=6)).isoformat(),  # Monday to Sunday, as the email says
    )
    assert figures["total"] == 3
    assert figures["by_status"] == [{"status": "queued", "count": 3}]


async def test_a_tenant_without_a_sender_is_skipped_and_the_others_still_mailed(
    live_database: Database, live_tenant: Tenant, make_live_tenant_without_sender: Tenant
) -> None:
    for tenant in (live_tenant, make_live_tenant_without_sender):
        await add_contacts(
            live_database,
            tenant,
            {"email": "may@example.net", "birthday": date(1990, 5, 4), "timezone": "UTC"},
        )
    await run(live_database, jobs.run_birthdays, at(2026, 5, 4, 12))
    assert await sent_to(live_database, live_tenant, "birthday") == Counter({"may@example.net": 1})
    assert await sent_to(live_database, make_live_tenant_without_sender, "birthday") == Counter()


async def test_a_stored_schedule_that_cannot_run_is_skipped_and_the_others_still_mailed(
    live_database: Database, live_tenant: Tenant
) -> None:
    """Rows the API would refuse today (an older release's, or edited by hand) used to raise in
    the job and stop it for every tenant."""
    async with live_database.transaction() as session:
        broken = await create_tenant(
            session, name=f"broken-{secrets.token_hex(4)}", domains=["example.com"]
        )
        session.add_all(
            [
                Schedule(tenant_id=broken.id, name="birthday", enabled=True, cron="61 9 * * *"),
                Schedule(
                    tenant_id=broken.id,
                    name="weekly_report",
                    enabled=True,
                    timezone="Mars/Olympus",
                    recipients=["ops@example.net"],
                ),
                Schedule(
                    tenant_id=live_tenant.id,
                    name="weekly_report",
                    enabled=True,
                    timezone="UTC",
                    recipients=["ops@example.net"],
                ),
            ]
        )
    for tenant in (live_tenant, broken):
        await add_contacts(
            live_database,
            tenant,
            {"email": "june@example.net", "birthday": date(1990, 6, 2), "timezone": "UTC"},
        )
    await run(live_database, jobs.run_birthdays, at(2026, 6, 2, 12))
    assert await sent_to(live_database, live_tenant, "birthday") == Counter({"june@example.net": 1})
    assert await sent_to(live_database, broken, "birthday") == Counter()
    today = datetime.now(UTC).date()
    monday = date.fromordinal(today.toordinal() - today.weekday() + 7)
    await run(live_database, jobs.run_weekly_reports, datetime.combine(monday, time(12), UTC))
    assert await sent_to(live_database, live_tenant, "weekly_report") == Counter(
        {"ops@example.net": 1}
    )
    assert await sent_to(live_database, broken, "weekly_report") == Counter()
