"""The schedules service against the real database: what it stores, what it refuses and why."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.errors import FieldError, NotFound, ValidationFailed
from mailsvc.models import Tenant
from mailsvc.schedules import schemas, service
from mailsvc.schedules.repository import ScheduleRepository
from tests.support.auth import TenantFactory

NOW = datetime(2026, 11, 18, 10, 20, tzinfo=UTC)  # a Wednesday


def clock() -> datetime:
    return NOW


def update(**fields: Any) -> schemas.ScheduleUpdate:
    return schemas.ScheduleUpdate.model_validate({"enabled": True, **fields})


async def stored(session: AsyncSession, tenant: Tenant) -> dict[str, tuple[Any, ...]]:
    rows = await ScheduleRepository(session).get_all(tenant.id)
    return {
        name: (r.enabled, r.cron, r.days, r.timezone, r.template, r.recipients)
        for name, r in rows.items()
    }


async def test_lists_every_job_with_its_defaults_and_next_run(
    session: AsyncSession, tenant: Tenant
) -> None:
    listed = await service.list_schedules(session, tenant.id, clock=clock)
    assert [(s.name, s.enabled, s.cron, s.days, s.template, s.next_run) for s in listed.data] == [
        ("birthday", True, "0 9 * * *", None, "birthday", datetime(2026, 11, 18, 11, tzinfo=UTC)),
        (
            "activation_reminder",
            True,
            None,
            3,
            "activation_reminder",
            datetime(2026, 11, 18, 11, tzinfo=UTC),
        ),
        ("weekly_report", False, "0 9 * * 1", None, "weekly_report", None),
    ]


async def test_put_stores_the_row_and_answers_with_the_next_run(
    session: AsyncSession, tenant: Tenant
) -> None:
    answer = await service.put_schedule(
        session,
        tenant.id,
        "weekly_report",
        update(cron="30 7 * * 5", timezone="Europe/Paris", recipients=["Boss@Example.com"]),
        clock=clock,
    )
    assert (answer.name, answer.enabled, answer.recipients) == (
        "weekly_report",
        True,
        ["Boss@example.com"],
    )
    assert answer.next_run == datetime(2026, 11, 20, 6, 30, tzinfo=UTC)  # Friday 07:30 in Paris
    assert await stored(session, tenant) == {
        "weekly_report": (True, "30 7 * * 5", None, "Europe/Paris", None, ["Boss@example.com"])
    }
    listed = await service.list_schedules(session, tenant.id, clock=clock)
    assert listed.data[2] == answer


async def test_put_replaces_the_settings_whole(session: AsyncSession, tenant: Tenant) -> None:
    await service.put_schedule(
        session, tenant.id, "birthday", update(cron="30 8 * * *", template="party"), clock=clock
    )
    answer = await service.put_schedule(
        session, tenant.id, "birthday", update(enabled=False), clock=clock
    )
    assert (answer.enabled, answer.cron, answer.template, answer.next_run) == (
        False,
        "0 9 * * *",
        "birthday",
        None,
    )
    assert await stored(session, tenant) == {"birthday": (False, None, None, "UTC", None, [])}


async def test_an_unknown_job_is_not_found_and_nothing_is_stored(
    session: AsyncSession, tenant: Tenant
) -> None:
    with pytest.raises(NotFound) as caught:
        await service.put_schedule(session, tenant.id, "anniversary", update(), clock=clock)
    assert caught.value.message == (
        "no schedule named 'anniversary'; there are birthday, activation_reminder, weekly_report"
    )
    assert await stored(session, tenant) == {}


@pytest.mark.parametrize(
    ("name", "fields", "errors"),
    [
        (
            "activation_reminder",
            {"cron": "0 9 * * *", "recipients": ["a@example.com"]},
            [
                (
                    ("body", "cron"),
                    "activation_reminder runs a number of days after sign-up: set days, not cron",
                ),
                (
                    ("body", "recipients"),
                    "only weekly_report has recipients: activation_reminder mails the contacts",
                ),
            ],
        ),
        (
            "birthday",
            {"cron": "0 9,12 * * *", "days": 2},
            [
                (("body", "days"), "only activation_reminder takes days, not birthday"),
                (
                    ("body", "cron"),
                    "birthday sends on each contact's birthday at one time of day: give "
                    "'minute hour * * *', such as '0 9 * * *'",
                ),
            ],
        ),
        (
            "birthday",
            {"cron": "0 9 * * 1"},
            [
                (
                    ("body", "cron"),
                    "birthday sends on each contact's birthday at one time of day: give "
                    "'minute hour * * *', such as '0 9 * * *'",
                ),
            ],
        ),
        (
            "weekly_report",
            {"days": 3},
            [
                (("body", "days"), "only activation_reminder takes days, not weekly_report"),
                (
                    ("body", "recipients"),
                    "at least one address is required to enable weekly_report",
                ),
            ],
        ),
    ],
)
async def test_every_problem_is_refused_and_nothing_is_stored(
    session: AsyncSession,
    tenant: Tenant,
    name: str,
    fields: dict[str, Any],
    errors: list[tuple[tuple[str, ...], str]],
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        await service.put_schedule(session, tenant.id, name, update(**fields), clock=clock)
    assert caught.value.errors == [FieldError(loc, msg) for loc, msg in errors]
    assert caught.value.message == "; ".join(f"{'.'.join(loc)}: {msg}" for loc, msg in errors)
    assert await stored(session, tenant) == {}


async def test_the_report_may_be_disabled_without_recipients(
    session: AsyncSession, tenant: Tenant
) -> None:
    answer = await service.put_schedule(
        session, tenant.id, "weekly_report", update(enabled=False), clock=clock
    )
    assert (answer.enabled, answer.recipients, answer.next_run) == (False, [], None)
    assert service.problems("weekly_report", update(enabled=False)) == []


async def test_each_tenant_has_its_own_settings(
    session: AsyncSession, make_tenant: TenantFactory
) -> None:
    ours, theirs = await make_tenant(), await make_tenant()
    await service.put_schedule(session, ours.id, "birthday", update(enabled=False), clock=clock)
    assert (await service.list_schedules(session, theirs.id, clock=clock)).data[0].enabled is True
    assert (await service.list_schedules(session, ours.id, clock=clock)).data[0].enabled is False
    assert await stored(session, theirs) == {}
