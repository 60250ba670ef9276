"""GET/PUT /v1/schedules: the defaults, next runs at a fixed clock, what is refused and how."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.auth import scopes
from mailsvc.kit.time import Clock
from mailsvc.models import Tenant
from mailsvc.schedules.endpoints import get_clock
from mailsvc.schedules.repository import ScheduleRepository
from tests.support.api import invalid, problem
from tests.support.auth import TenantFactory, bearer

ONE_TIME_OF_DAY = (
    "birthday sends on each contact's birthday at one time of day: give 'minute hour * * *', "
    "such as '0 9 * * *'"
)
NOW = datetime(2026, 11, 18, 10, 20, tzinfo=UTC)  # a Wednesday

BIRTHDAY_DESCRIPTION = (
    "A birthday email at {at} on each contact's birthday, in the contact's own time zone; "
    "birthdays on February 29 are celebrated on February 28 in other years."
)
BIRTHDAY = {
    "name": "birthday",
    "enabled": True,
    "cron": "0 9 * * *",
    "days": None,
    "timezone": "UTC",
    "template": "birthday",
    "recipients": [],
    "next_run": "2026-11-18T11:00:00Z",
    "description": BIRTHDAY_DESCRIPTION.format(at="09:00"),
}
ACTIVATION = {
    "name": "activation_reminder",
    "enabled": True,
    "cron": None,
    "days": 3,
    "timezone": "UTC",
    "template": "activation_reminder",
    "recipients": [],
    "next_run": "2026-11-18T11:00:00Z",
    "description": "A reminder 3 days after a contact signs up, while they have not activated.",
}
WEEKLY = {
    "name": "weekly_report",
    "enabled": False,
    "cron": "0 9 * * 1",
    "days": None,
    "timezone": "UTC",
    "template": "weekly_report",
    "recipients": [],
    "next_run": None,
    "description": "Last week's figures (Monday to Sunday, UTC) to the recipients, "
    "on Mondays at 09:00 (UTC).",
}


@pytest_asyncio.fixture
async def fixed_clock(app: FastAPI) -> AsyncIterator[None]:
    async def clock() -> Clock:
        return lambda: NOW

    app.dependency_overrides[get_clock] = clock
    yield
    app.dependency_overrides.pop(get_clock)


pytestmark = pytest.mark.usefixtures("fixed_clock")


async def put(
    client: httpx.AsyncClient,
    tenant: Tenant,
    name: str,
    body: Any,
    scope: tuple[str, ...] = scopes.ALL_SCOPES,
) -> httpx.Response:
    return await client.put(f"/v1/schedules/{name}", json=body, headers=bearer(tenant, scope))


async def listed(client: httpx.AsyncClient, tenant: Tenant) -> list[dict[str, Any]]:
    response = await client.get("/v1/schedules", headers=bearer(tenant))
    assert response.status_code == 200
    data: list[dict[str, Any]] = response.json()["data"]
    return data


# -- list ----------------------------------------------------------------------------------------


async def test_defaults_and_next_runs(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.get("/v1/schedules", headers=bearer(tenant, [scopes.MESSAGES_READ]))
    assert response.status_code == 200
    assert response.json() == {"data": [BIRTHDAY, ACTIVATION, WEEKLY]}


async def test_list_needs_the_read_scope(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.get("/v1/schedules", headers=bearer(tenant, [scopes.CONTACTS_READ]))
    assert response.status_code == 403
    assert response.json() == problem(
        403, "Forbidden", "this token lacks the 'messages:read' scope", "forbidden"
    )
    assert (await client.get("/v1/schedules")).status_code == 401


# -- put -----------------------------------------------------------------------------------------


async def test_enable_the_weekly_report(client: httpx.AsyncClient, tenant: Tenant) -> None:
    body = {
        "enabled": True,
        "timezone": "Europe/Berlin",
        "recipients": ["Boss@Example.COM", "ops@example.com", "boss@example.com"],
    }
    response = await put(client, tenant, "weekly_report", body)
    assert response.status_code == 200
    expected = {
        **WEEKLY,
        "enabled": True,
        "timezone": "Europe/Berlin",
        "recipients": ["Boss@example.com", "ops@example.com"],
        # Monday 09:00 in Berlin (CET) is 08:00 UTC.
        "next_run": "2026-11-23T08:00:00Z",
        "description": "Last week's figures (Monday to Sunday, Europe/Berlin) to the "
        "recipients, on Mondays at 09:00 (Europe/Berlin).",
    }
    assert response.json() == expected
    assert await listed(client, tenant) == [BIRTHDAY, ACTIVATION, expected]


async def test_put_replaces_the_settings_whole(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await put(
        client, tenant, "birthday", {"enabled": True, "cron": "30  8 * * *", "template": "cake"}
    )
    assert response.status_code == 200
    assert response.json() == {
        **BIRTHDAY,
        "cron": "30 8 * * *",
        "template": "cake",
        "description": BIRTHDAY_DESCRIPTION.format(at="08:30"),
    }
    # Left out the second time: back to the defaults.
    response = await put(client, tenant, "birthday", {"enabled": False})
    assert response.json() == {**BIRTHDAY, "enabled": False, "next_run": None}

    response = await put(client, tenant, "activation_reminder", {"enabled": True, "days": 1})
    assert response.json() == {
        **ACTIVATION,
        "days": 1,
        "description": "A reminder 1 day after a contact signs up, while they have not activated.",
    }
    assert await listed(client, tenant) == [
        {**BIRTHDAY, "enabled": False, "next_run": None},
        response.json(),
        WEEKLY,
    ]


async def test_weekly_report_on_another_day(client: httpx.AsyncClient, tenant: Tenant) -> None:
    body = {"enabled": True, "cron": "0 17 * * fri", "recipients": ["a@example.com"]}
    response = await put(client, tenant, "weekly_report", body)
    assert response.json()["next_run"] == "2026-11-20T17:00:00Z"
    assert response.json()["description"].endswith("on Fridays at 17:00 (UTC).")
    body = {"enabled": True, "cron": "0 8,17 * * 1-5", "recipients": ["a@example.com"]}
    response = await put(client, tenant, "weekly_report", body)
    assert response.json()["next_run"] == "2026-11-18T17:00:00Z"
    assert response.json()["description"].endswith("at the times of cron '0 8,17 * * 1-5' (UTC).")


async def test_a_report_that_next_fires_years_away(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    # Issue 9: days 1, 8, 15, 22 and 29 of March (a day-of-month starting with '*' is ANDed with
    # the day of week) on a Sunday: March 2026 had five; the next is in 2037.
    body = {"enabled": True, "cron": "0 9 */7 3 0", "recipients": ["a@example.com"]}
    response = await put(client, tenant, "weekly_report", body)
    assert response.status_code == 200
    expected = {
        **WEEKLY,
        "enabled": True,
        "cron": "0 9 */7 3 0",
        "recipients": ["a@example.com"],
        "next_run": "2037-03-01T09:00:00Z",
        "description": "Last week's figures (Monday to Sunday, UTC) to the recipients, "
        "at the times of cron '0 9 */7 3 0' (UTC).",
    }
    assert response.json() == expected
    assert await listed(client, tenant) == [BIRTHDAY, ACTIVATION, expected]


async def test_a_stored_cron_that_cannot_run_is_listed_with_why(
    client: httpx.AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    # Rows the API refuses today, as an older release or a hand-made UPDATE could leave them.
    repository = ScheduleRepository(session)
    await repository.put(
        tenant.id,
        "weekly_report",
        enabled=True,
        cron="0 9 30 2 *",
        days=None,
        timezone="UTC",
        template=None,
        recipients=["a@example.com"],
    )
    await repository.put(
        tenant.id,
        "birthday",
        enabled=True,
        cron="0 9 * * *",
        days=None,
        timezone="Mars/Olympus",
        template=None,
        recipients=[],
    )
    await session.commit()
    assert await listed(client, tenant) == [
        {
            **BIRTHDAY,
            "timezone": "Mars/Olympus",
            "next_run": None,
            "description": BIRTHDAY_DESCRIPTION.format(at="09:00")
            + " It does not run until its settings are saved again: cron '0 9 * * *' in time "
            "zone 'Mars/Olympus': 'No time zone found with key Mars/Olympus'",
        },
        ACTIVATION,
        {
            **WEEKLY,
            "enabled": True,
            "cron": "0 9 30 2 *",
            "recipients": ["a@example.com"],
            "next_run": None,
            "description": "Last week's figures (Monday to Sunday, UTC) to the recipients, "
            "weekly (UTC). It does not run until its settings are saved again: cron "
            "'0 9 30 2 *' in time zone 'UTC': day-of-month: '30' never falls in month '2', "
            "so the cron never fires",
        },
    ]


async def test_tenants_see_only_their_own(
    client: httpx.AsyncClient, make_tenant: TenantFactory
) -> None:
    ours, theirs = await make_tenant(), await make_tenant()
    assert (await put(client, ours, "birthday", {"enabled": False})).status_code == 200
    assert (await listed(client, theirs))[0] == BIRTHDAY
    assert (await listed(client, ours))[0]["enabled"] is False


async def test_put_needs_admin(client: httpx.AsyncClient, tenant: Tenant) -> None:
    every_other = tuple(s for s in scopes.ALL_SCOPES if s != scopes.ADMIN)
    response = await put(client, tenant, "birthday", {"enabled": False}, every_other)
    assert response.status_code == 403
    assert response.json() == problem(
        403, "Forbidden", "this token lacks the 'admin' scope", "forbidden"
    )
    assert await listed(client, tenant) == [BIRTHDAY, ACTIVATION, WEEKLY]


async def test_unknown_schedule(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await put(client, tenant, "anniversary", {"enabled": True})
    assert response.status_code == 404
    assert response.json() == problem(
        404,
        "Not Found",
        "no schedule named 'anniversary'; there are birthday, activation_reminder, weekly_report",
        "not-found",
    )


# -- 422 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body", "loc", "msg"),
    [
        (
            "weekly_report",
            {"cron": "0 9 * *"},
            ["body", "cron"],
            "expected 5 fields (minute hour day-of-month month day-of-week), got 4 in '0 9 * *'",
        ),
        (
            "weekly_report",
            {"cron": "0 9 * * 8"},
            ["body", "cron"],
            "day-of-week: 8 is out of range 0-7",
        ),
        (
            "weekly_report",
            {"cron": "0 9 30 2 */2", "recipients": ["a@example.com"]},
            ["body", "cron"],
            "day-of-month: '30' never falls in month '2', so the cron never fires",
        ),
        (
            "birthday",
            {"cron": "0 9 * * 1"},
            ["body", "cron"],
            ONE_TIME_OF_DAY,
        ),
        (
            "birthday",
            {"cron": "0 9,12 * * *"},
            ["body", "cron"],
            ONE_TIME_OF_DAY,
        ),
        (
            "activation_reminder",
            {"cron": "0 9 * * *"},
            ["body", "cron"],
            "activation_reminder runs a number of days after sign-up: set days, not cron",
        ),
        (
            "weekly_report",
            {"timezone": "Mars/Olympus"},
            ["body", "timezone"],
            "'Mars/Olympus' is not an IANA time zone name, such as 'Europe/Paris' or 'UTC'",
        ),
        (
            "weekly_report",
            {"timezone": "localtime"},
            ["body", "timezone"],
            "'localtime' is not an IANA time zone name, such as 'Europe/Paris' or 'UTC'",
        ),
        (
            "activation_reminder",
            {"days": 0},
            ["body", "days"],
            "Input should be greater than or equal to 1",
        ),
        (
            "activation_reminder",
            {"days": 366},
            ["body", "days"],
            "Input should be less than or equal to 365",
        ),
        (
            "birthday",
            {"days": 3},
            ["body", "days"],
            "only activation_reminder takes days, not birthday",
        ),
        (
            "weekly_report",
            {"days": 3, "recipients": ["a@example.com"]},
            ["body", "days"],
            "only activation_reminder takes days, not weekly_report",
        ),
        (
            "weekly_report",
            {},
            ["body", "recipients"],
            "at least one address is required to enable weekly_report",
        ),
        (
            "birthday",
            {"recipients": ["a@example.com"]},
            ["body", "recipients"],
            "only weekly_report has recipients: birthday mails the contacts",
        ),
        (
            "weekly_report",
            {"recipients": ["not-an-address"]},
            ["body", "recipients", 0],
            "'not-an-address' is not a valid email address: An email address must have an @-sign.",
        ),
        (
            "weekly_report",
            {"recipients": [f"r{i}@example.com" for i in range(51)]},
            ["body", "recipients"],
            "List should have at most 50 items after validation, not 51",
        ),
        (
            "birthday",
            {"template": "Birthday!"},
            ["body", "template"],
            "String should match pattern '^[a-z0-9][a-z0-9_.-]{0,63}$'",
        ),
        ("birthday", {"colour": "blue"}, ["body", "colour"], "Extra inputs are not permitted"),
    ],
)
async def test_invalid(
    client: httpx.AsyncClient,
    tenant: Tenant,
    name: str,
    body: dict[str, Any],
    loc: list[str | int],
    msg: str,
) -> None:
    response = await put(client, tenant, name, {"enabled": True, **body})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == invalid(loc, msg)
    assert await listed(client, tenant) == [BIRTHDAY, ACTIVATION, WEEKLY]


async def test_every_problem_is_listed(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await put(
        client,
        tenant,
        "activation_reminder",
        {"enabled": True, "cron": "0 9 * * *", "recipients": ["a@example.com"]},
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {
            "loc": ["body", "cron"],
            "msg": "activation_reminder runs a number of days after sign-up: set days, not cron",
        },
        {
            "loc": ["body", "recipients"],
            "msg": "only weekly_report has recipients: activation_reminder mails the contacts",
        },
    ]
    response = await put(client, tenant, "weekly_report", {"recipients": []})
    assert response.json() == invalid(["body", "enabled"], "Field required")


async def test_disabling_the_report_needs_no_recipients(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await put(client, tenant, "weekly_report", {"enabled": False})
    assert response.status_code == 200
    assert response.json() == WEEKLY
