"""The schedules queries against real rows: exactly who is selected, and through which index."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ARRAY, Text, bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.models import Contact, Message, RecurringSend, Tenant
from mailsvc.schedules import timing
from mailsvc.schedules.repository import (
    EffectiveSchedule,
    ScheduleRepository,
    birthday_contacts,
    birthday_contacts_plan,
    effective_for_tenant,
    effective_schedules,
    explain_birthday_contacts,
    unactivated_contacts,
    unactivated_contacts_plan,
    weekly_figures,
)
from tests.support.auth import TenantFactory

NINE = time(9, 0)
NOW = datetime(2026, 11, 18, 12, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


async def add_contact(
    session: AsyncSession, tenant: Tenant, email: str, **fields: Any
) -> uuid.UUID:
    contact = Contact(tenant_id=tenant.id, email=email, attributes=fields.pop("attributes", {}))
    for key, value in fields.items():
        setattr(contact, key, value)
    session.add(contact)
    await session.flush()
    return contact.id


# -- settings ------------------------------------------------------------------------------------


async def test_put_inserts_then_updates_only_the_given_fields(
    session: AsyncSession, tenant: Tenant
) -> None:
    repo = ScheduleRepository(session)
    row = await repo.put(tenant.id, "birthday", enabled=False, cron="30 8 * * *")
    assert (row.enabled, row.cron, row.timezone, row.template, row.recipients) == (
        False,
        "30 8 * * *",
        "UTC",
        None,
        [],
    )
    row = await repo.put(tenant.id, "birthday", enabled=True, template="party")
    assert (row.enabled, row.cron, row.template) == (True, "30 8 * * *", "party")
    assert list(await repo.get_all(tenant.id)) == ["birthday"]


async def test_effective_settings_fill_in_the_defaults(
    session: AsyncSession, tenant: Tenant
) -> None:
    assert await effective_for_tenant(session, tenant.id) == [
        EffectiveSchedule(tenant.id, "birthday", True, "0 9 * * *", None, "UTC", "birthday", []),
        EffectiveSchedule(
            tenant.id, "activation_reminder", True, None, 3, "UTC", "activation_reminder", []
        ),
        EffectiveSchedule(
            tenant.id, "weekly_report", False, "0 9 * * 1", None, "UTC", "weekly_report", []
        ),
    ]
    repo = ScheduleRepository(session)
    await repo.put(tenant.id, "activation_reminder", enabled=True, days=7, template="nudge")
    await repo.put(
        tenant.id,
        "weekly_report",
        enabled=True,
        timezone="Europe/Berlin",
        recipients=["boss@example.com"],
    )
    assert (await effective_for_tenant(session, tenant.id))[1:] == [
        EffectiveSchedule(tenant.id, "activation_reminder", True, None, 7, "UTC", "nudge", []),
        EffectiveSchedule(
            tenant.id,
            "weekly_report",
            True,
            "0 9 * * 1",
            None,
            "Europe/Berlin",
            "weekly_report",
            ["boss@example.com"],
        ),
    ]


async def test_effective_schedules_are_the_enabled_ones_of_every_tenant(
    session: AsyncSession, make_tenant: TenantFactory
) -> None:
    plain, quiet, early = await make_tenant(), await make_tenant(), await make_tenant()
    repo = ScheduleRepository(session)
    await repo.put(quiet.id, "birthday", enabled=False)
    await repo.put(early.id, "birthday", enabled=True, cron="30 7 * * *", template="cake")
    await repo.put(quiet.id, "weekly_report", enabled=True, recipients=["a@example.com"])
    # Enabled without recipients (not possible through the API): still nobody to send to.
    await repo.put(early.id, "weekly_report", enabled=True, recipients=[])
    ours = {plain.id, quiet.id, early.id}

    def mine(schedules: list[EffectiveSchedule]) -> list[EffectiveSchedule]:
        return sorted((s for s in schedules if s.tenant_id in ours), key=lambda s: s.tenant_id)

    assert mine(await effective_schedules(session, "birthday")) == sorted(
        [
            EffectiveSchedule(plain.id, "birthday", True, "0 9 * * *", None, "UTC", "birthday", []),
            EffectiveSchedule(early.id, "birthday", True, "30 7 * * *", None, "UTC", "cake", []),
        ],
        key=lambda s: s.tenant_id,
    )
    assert len(mine(await effective_schedules(session, "activation_reminder"))) == 3
    assert mine(await effective_schedules(session, "weekly_report")) == [
        EffectiveSchedule(
            quiet.id,
            "weekly_report",
            True,
            "0 9 * * 1",
            None,
            "UTC",
            "weekly_report",
            ["a@example.com"],
        )
    ]


# -- birthdays -----------------------------------------------------------------------------------


async def test_birthday_contacts_in_their_own_zones(
    session: AsyncSession, make_tenant: TenantFactory
) -> None:
    tenant, other = await make_tenant(), await make_tenant()
    contacts: dict[str, dict[str, Any]] = {
        "late@example.net": {"birthday": date(1990, 6, 15), "timezone": "Etc/GMT+12"},
        "kiri@example.net": {"birthday": date(1985, 6, 16), "timezone": "Pacific/Kiritimati"},
        "berlin@example.net": {
            "birthday": date(1970, 6, 15),
            "timezone": "Europe/Berlin",
            "name": "Bert",
            "attributes": {"plan": "pro"},
            "signed_up_at": utc(2026, 1, 2, 3, 4),
        },
        "utc@example.net": {"birthday": date(2000, 6, 15), "timezone": "UTC"},
        # Not today: a day early, a day late, or at 07:00 in Sydney on June 16.
        "yesterday@example.net": {"birthday": date(1990, 6, 14), "timezone": "Etc/GMT+12"},
        "tomorrow@example.net": {"birthday": date(1990, 6, 16), "timezone": "UTC"},
        "sydney@example.net": {"birthday": date(1990, 6, 16), "timezone": "Australia/Sydney"},
        "nobirthday@example.net": {"timezone": "UTC"},
    }
    ids = {email: await add_contact(session, tenant, email, **f) for email, f in contacts.items()}
    await add_contact(session, other, "other@example.net", birthday=date(1990, 6, 15))

    # 21:00 UTC on June 15: 09:00 on the 15th at GMT-12, 11:00 on the 16th at Kiritimati.
    targets = timing.birthday_targets(utc(2026, 6, 15, 21), NINE)
    rows = sorted(await birthday_contacts(session, targets, [tenant.id]), key=lambda r: r.email)
    assert [(r.email, r.local_date) for r in rows] == [
        ("berlin@example.net", date(2026, 6, 15)),
        ("kiri@example.net", date(2026, 6, 16)),
        ("late@example.net", date(2026, 6, 15)),
        ("utc@example.net", date(2026, 6, 15)),
    ]
    assert tuple(rows[0]) == (
        tenant.id,
        ids["berlin@example.net"],
        "berlin@example.net",
        "Bert",
        date(1970, 6, 15),
        "Europe/Berlin",
        {"plan": "pro"},
        utc(2026, 1, 2, 3, 4),
        date(2026, 6, 15),
    )
    assert rows[0].contact_id == ids["berlin@example.net"]

    # Both tenants; and none at all.
    both = await birthday_contacts(session, targets, [tenant.id, other.id])
    assert sorted(r.email for r in both if r.tenant_id == other.id) == ["other@example.net"]
    assert await birthday_contacts(session, targets, []) == []
    assert await birthday_contacts(session, [], [tenant.id]) == []

    # Once greeted this (local) year, unsent_only leaves the contact out.
    session.add(
        RecurringSend(
            tenant_id=tenant.id,
            schedule="birthday",
            recipient="berlin@example.net",
            period="2026",
            message_id=uuid.uuid4(),
        )
    )
    session.add(
        RecurringSend(
            tenant_id=tenant.id,
            schedule="birthday",
            recipient="utc@example.net",
            period="2025",  # last year's
            message_id=uuid.uuid4(),
        )
    )
    await session.flush()
    unsent = await birthday_contacts(session, targets, [tenant.id], unsent_only=True)
    assert sorted(r.email for r in unsent) == [
        "kiri@example.net",
        "late@example.net",
        "utc@example.net",
    ]


async def test_february_29_birthdays(session: AsyncSession, tenant: Tenant) -> None:
    await add_contact(session, tenant, "leap@example.net", birthday=date(2000, 2, 29))
    await add_contact(session, tenant, "feb28@example.net", birthday=date(1999, 2, 28))
    await add_contact(session, tenant, "mar1@example.net", birthday=date(1999, 3, 1))

    async def greeted(now: datetime) -> list[str]:
        targets = timing.birthday_targets(now, NINE, ["UTC"])
        return sorted(r.email for r in await birthday_contacts(session, targets, [tenant.id]))

    assert await greeted(utc(2027, 2, 28, 10)) == ["feb28@example.net", "leap@example.net"]
    assert await greeted(utc(2028, 2, 28, 10)) == ["feb28@example.net"]
    assert await greeted(utc(2028, 2, 29, 10)) == ["leap@example.net"]
    assert await greeted(utc(2027, 3, 1, 10)) == ["mar1@example.net"]
    assert await greeted(utc(2027, 2, 28, 8, 59)) == []


# -- the plans -----------------------------------------------------------------------------------


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _scans(plan: dict[str, Any]) -> set[tuple[str, str | None]]:
    """(node type, index name) of every node that reads contacts."""
    return {
        (node["Node Type"], node.get("Index Name"))
        for node in _nodes(plan)
        if node.get("Relation Name") == "contacts"
    }


async def test_selections_use_the_partial_indexes(session: AsyncSession, tenant: Tenant) -> None:
    # 100,000 contacts over every zone and every day of the year; half signed up in the last
    # 70 days, a third of those activated. ANALYZE so the planner knows. (Below about 60,000
    # narrow rows a sequential scan is cheaper, and the planner rightly takes it.)
    fill = text(
        """
        INSERT INTO contacts (id, tenant_id, email, birthday, timezone, signed_up_at,
                              activated_at, attributes)
        SELECT gen_random_uuid(), :tenant_id, 'c' || g || '@example.net',
               date '1980-01-01' + (g % 366),
               (:zones)[1 + g % cardinality(:zones)],
               CASE WHEN g % 2 = 0 THEN CAST(:now AS timestamptz) - make_interval(mins => g) END,
               CASE WHEN g % 6 = 0 THEN CAST(:now AS timestamptz) END,
               '{}'::jsonb
          FROM generate_series(1, 100000) AS g
        """
    ).bindparams(bindparam("zones", type_=ARRAY(Text)))
    zones = [name for name, _ in timing.all_zones()]
    await session.execute(fill, {"tenant_id": tenant.id, "zones": zones, "now": NOW})
    await session.execute(text("ANALYZE contacts"))

    targets = timing.birthday_targets(NOW, NINE)
    plan = await birthday_contacts_plan(session, targets, [tenant.id])
    scans = _scans(plan)
    assert scans <= {("Index Scan", "ix_contacts_birthday"), ("Bitmap Heap Scan", None)}, plan
    assert any(n.get("Index Name") == "ix_contacts_birthday" for n in _nodes(plan)), plan
    assert "ix_contacts_birthday" in await explain_birthday_contacts(session, targets, [tenant.id])

    windows = [(tenant.id, *timing.activation_window(NOW, 3))]
    plan = await unactivated_contacts_plan(session, windows)
    assert _scans(plan) <= {("Index Scan", "ix_contacts_unactivated"), ("Bitmap Heap Scan", None)}
    assert any(n.get("Index Name") == "ix_contacts_unactivated" for n in _nodes(plan)), plan


# -- activation reminders ------------------------------------------------------------------------


async def test_unactivated_contacts_in_each_tenants_window(
    session: AsyncSession, make_tenant: TenantFactory
) -> None:
    three, five, idle = await make_tenant(), await make_tenant(), await make_tenant()
    now = utc(2026, 11, 18, 12)
    ago = {d: now - timedelta(days=d) for d in range(10)}
    for tenant in (three, five, idle):
        prefix = tenant.name
        await add_contact(session, tenant, f"{prefix}-2d@example.net", signed_up_at=ago[2])
        await add_contact(session, tenant, f"{prefix}-3d@example.net", signed_up_at=ago[3])
        await add_contact(session, tenant, f"{prefix}-4d@example.net", signed_up_at=ago[4])
        await add_contact(
            session, tenant, f"{prefix}-5d@example.net", signed_up_at=ago[5] + timedelta(seconds=1)
        )
        await add_contact(session, tenant, f"{prefix}-5d-edge@example.net", signed_up_at=ago[5])
        await add_contact(session, tenant, f"{prefix}-6d@example.net", signed_up_at=ago[6])
        await add_contact(
            session, tenant, f"{prefix}-7d@example.net", signed_up_at=ago[7], activated_at=ago[6]
        )
        await add_contact(
            session,
            tenant,
            f"{prefix}-3d-active@example.net",
            signed_up_at=ago[3],
            activated_at=ago[2],
        )
        await add_contact(session, tenant, f"{prefix}-never@example.net")

    windows = [
        (three.id, *timing.activation_window(now, 3)),  # (now-5d, now-3d]
        (five.id, *timing.activation_window(now, 5)),  # (now-7d, now-5d]
    ]
    rows = await unactivated_contacts(session, windows)
    assert sorted((r.tenant_id == three.id, r.email, r.signed_up_at) for r in rows) == sorted(
        [
            (True, f"{three.name}-3d@example.net", ago[3]),
            (True, f"{three.name}-4d@example.net", ago[4]),
            (True, f"{three.name}-5d@example.net", ago[5] + timedelta(seconds=1)),
            (False, f"{five.name}-5d-edge@example.net", ago[5]),
            (False, f"{five.name}-6d@example.net", ago[6]),
        ]
    )
    row = next(r for r in rows if r.email == f"{three.name}-3d@example.net")
    assert (row.name, row.timezone, row.attributes) == (None, "UTC", {})
    # Two tenants on the same window share one range scan; each still gets only its own.
    same = [
        (three.id, *timing.activation_window(now, 3)),
        (idle.id, *timing.activation_window(now, 3)),
    ]
    assert sorted(r.email for r in await unactivated_contacts(session, same)) == sorted(
        f"{t.name}-{age}@example.net" for t in (three, idle) for age in ("3d", "4d", "5d")
    )
    assert await unactivated_contacts(session, []) == []


# -- weekly report -------------------------------------------------------------------------------


async def add_message(
    session: AsyncSession,
    tenant: Tenant,
    created_at: datetime,
    status: str,
    provider: str | None = None,
    tags: list[str] | None = None,
) -> None:
    message_id = uuid.uuid4()
    session.add(
        Message(
            id=message_id,
            tenant_id=tenant.id,
            status=status,
            lane="transactional",
            priority="high",
            sender={"email": "noreply@example.com", "name": None},
            to=[{"email": "ada@example.net", "name": None}],
            recipients=["ada@example.net"],
            subject="Hello",
            text_body="Hi",
            tags=tags or [],
            provider=provider,
            message_id_header=f"<{message_id.hex}@example.com>",
            created_at=created_at,
            updated_at=created_at,
        )
    )
    await session.flush()


async def test_weekly_figures(session: AsyncSession, make_tenant: TenantFactory) -> None:
    tenant, other = await make_tenant(), await make_tenant()
    start, end = utc(2026, 11, 16), utc(2026, 11, 23)
    inside = start + timedelta(days=2)
    for _ in range(3):
        await add_message(session, tenant, inside, "sent", "smtp", ["welcome"])
    await add_message(session, tenant, start, "sent", "sendgrid", ["welcome", "promo"])
    await add_message(session, tenant, end - timedelta(microseconds=1), "failed", "smtp")
    await add_message(session, tenant, inside, "queued", None, ["promo"])
    await add_message(session, tenant, inside, "delivered", "mailgun")
    # Outside the week, or another tenant's.
    await add_message(session, tenant, end, "sent", "smtp", ["welcome"])
    await add_message(session, tenant, start - timedelta(microseconds=1), "sent", "smtp")
    await add_message(session, other, inside, "sent", "smtp", ["welcome"])

    assert await weekly_figures(session, tenant.id, start, end) == {
        "total": 7,
        "by_status": [
            {"status": "sent", "count": 4},
            {"status": "delivered", "count": 1},
            {"status": "failed", "count": 1},
            {"status": "queued", "count": 1},
        ],
        "by_provider": [
            {"provider": "smtp", "count": 4},
            {"provider": "mailgun", "count": 1},
            {"provider": "sendgrid", "count": 1},
            {"provider": None, "count": 1},
        ],
        "by_tag": [{"tag": "welcome", "count": 4}, {"tag": "promo", "count": 2}],
    }
    assert await weekly_figures(session, tenant.id, utc(2026, 1, 5), utc(2026, 1, 12)) == {
        "total": 0,
        "by_status": [],
        "by_provider": [],
        "by_tag": [],
    }
