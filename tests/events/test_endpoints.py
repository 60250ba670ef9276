"""POST /v1/events and the event-type mapping: what each built-in event does, and the 422s."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.models import Contact, Message, Tenant
from tests.support.auth import bearer

CONFIRM = "https://app.example.com/confirm"


async def event(client: httpx.AsyncClient, tenant: Tenant, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/v1/events", json=body, headers=bearer(tenant))


def signed_up(email: str = "ada@example.net", **data: Any) -> dict[str, Any]:
    return {
        "type": "user.signed_up",
        "contact": {"email": email, "name": "Ada Lovelace", "timezone": "Europe/London"},
        "data": {"confirm_url": CONFIRM, **data},
    }


async def test_signed_up_sends_confirmation_then_welcome(
    client: httpx.AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    response = await event(client, tenant, signed_up())
    assert response.status_code == 202, response.text
    confirmation, welcome = response.json()["messages"]
    assert (confirmation["template"], welcome["template"]) == ("account_confirmation", "welcome")
    assert (confirmation["status"], welcome["status"]) == ("queued", "scheduled")
    assert confirmation["priority"] == welcome["priority"] == "high"
    assert confirmation["tags"] == ["user.signed_up"]
    assert confirmation["to"] == [{"email": "ada@example.net", "name": "Ada Lovelace"}]

    rows = {
        m.template: m
        for m in (await session.execute(select(Message).where(Message.tenant_id == tenant.id)))
        .scalars()
        .all()
    }
    assert rows["welcome"].after_message_id == rows["account_confirmation"].id
    assert rows["welcome"].enqueued_at is None
    assert rows["account_confirmation"].lane == "transactional"
    assert rows["account_confirmation"].html_body is not None
    assert CONFIRM in (rows["account_confirmation"].text_body or "")
    assert "token=" in (rows["account_confirmation"].text_body or "")

    contact = (
        await session.execute(select(Contact).where(Contact.tenant_id == tenant.id))
    ).scalar_one()
    assert (contact.email, contact.name, contact.timezone) == (
        "ada@example.net",
        "Ada Lovelace",
        "Europe/London",
    )
    assert contact.signed_up_at is not None
    assert abs(contact.signed_up_at - datetime.now(UTC)) < timedelta(minutes=1)


async def test_signed_up_takes_signed_up_at_from_data(
    client: httpx.AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    response = await event(client, tenant, signed_up(signed_up_at="2026-11-01T08:00:00+14:00"))
    assert response.status_code == 202, response.text
    contact = (
        await session.execute(select(Contact).where(Contact.tenant_id == tenant.id))
    ).scalar_one()
    assert contact.signed_up_at == datetime(2026, 10, 31, 18, 0, tzinfo=UTC)


async def test_signed_up_without_confirm_url_is_422_naming_data(
    client: httpx.AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    body = signed_up()
    body["data"] = {}
    response = await event(client, tenant, body)
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["loc"] == ["body", "data"]
    assert "confirm_url" in error["msg"]
    # all or nothing: no contact, no message
    assert (
        await session.execute(select(Contact).where(Contact.tenant_id == tenant.id))
    ).first() is None
    assert (
        await session.execute(select(Message).where(Message.tenant_id == tenant.id))
    ).first() is None


async def test_unknown_event_type_is_422_naming_type(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await event(
        client, tenant, {"type": "order.shipped", "contact": {"email": "a@example.net"}}
    )
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["loc"] == ["body", "type"]
    assert error["msg"].startswith("unknown event type 'order.shipped'")


async def test_bad_contact_fields_are_422_naming_them(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    body = signed_up()
    body["contact"]["timezone"] = "Mars/Olympus_Mons"
    tomorrow = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    body["contact"]["birthday"] = tomorrow
    response = await event(client, tenant, body)
    assert response.status_code == 422
    locs = sorted(tuple(e["loc"]) for e in response.json()["errors"])
    assert ("body", "contact", "timezone") in locs


async def test_a_birthday_in_the_future_is_422_naming_the_contacts_field(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    body = signed_up()
    body["contact"]["birthday"] = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    response = await event(client, tenant, body)
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"loc": ["body", "contact", "birthday"], "msg": "birthday is in the future"}
    ]


async def test_nul_in_event_data_is_422_naming_data(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await event(
        client,
        tenant,
        {
            "type": "user.password_changed",
            "contact": {"email": "a@example.net"},
            "data": {"x": "\u0000"},
        },
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"loc": ["body", "data", "x"], "msg": "must not contain NUL characters"}
    ]


async def test_the_first_activation_counts(
    client: httpx.AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    first = {"activated_at": "2026-11-01T10:00:00+00:00"}
    later = {"activated_at": "2026-11-05T10:00:00+00:00"}
    for data in (first, later):
        response = await event(
            client,
            tenant,
            {"type": "user.activated", "contact": {"email": "ada@example.net"}, "data": data},
        )
        assert response.status_code == 202, response.text
    contact = (
        await session.execute(
            select(Contact)
            .where(Contact.tenant_id == tenant.id)
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    assert contact.activated_at == datetime(2026, 11, 1, 10, tzinfo=UTC)


async def test_password_changed_and_profile_incomplete(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    for kind, template in (
        ("user.password_changed", "password_changed"),
        ("user.profile_incomplete", "profile_reminder"),
    ):
        response = await event(
            client, tenant, {"type": kind, "contact": {"email": "a@example.net"}}
        )
        assert response.status_code == 202, response.text
        [message] = response.json()["messages"]
        assert (message["template"], message["status"]) == (template, "queued")


async def test_activated_sets_activated_at_and_cancels_a_pending_reminder(
    client: httpx.AsyncClient, tenant: Tenant, session: AsyncSession
) -> None:
    reminder = await client.post(
        "/v1/messages",
        json={
            "to": ["ada@example.net"],
            "template": "activation_reminder",
            "send_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        },
        headers=bearer(tenant),
    )
    assert reminder.status_code == 202, reminder.text
    other = await client.post(
        "/v1/messages",
        json={
            "to": ["bob@example.net"],
            "template": "activation_reminder",
            "send_at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
        },
        headers=bearer(tenant),
    )
    response = await event(
        client, tenant, {"type": "user.activated", "contact": {"email": "ADA@example.net"}}
    )
    assert response.status_code == 202, response.text
    assert response.json()["messages"] == []

    query = select(Message).execution_options(populate_existing=True)
    status = {str(m.id): m.status for m in (await session.execute(query)).scalars()}
    assert status[reminder.json()["id"]] == "cancelled"
    assert status[other.json()["id"]] == "scheduled"
    contact = (
        await session.execute(select(Contact).where(Contact.tenant_id == tenant.id))
    ).scalar_one()
    assert contact.activated_at is not None


async def test_a_tenant_can_remap_an_event(client: httpx.AsyncClient, tenant: Tenant) -> None:
    put = await client.put(
        "/v1/events/types/user.signed_up",
        json={"templates": ["welcome"], "priority": "normal"},
        headers=bearer(tenant),
    )
    assert put.status_code == 200, put.text
    assert put.json() == {
        "type": "user.signed_up",
        "templates": ["welcome"],
        "priority": "normal",
        "builtin": True,
        "customised": True,
        "effects": put.json()["effects"],
    }
    response = await event(client, tenant, signed_up())
    [message] = response.json()["messages"]
    assert (message["template"], message["priority"]) == ("welcome", "normal")

    custom = await client.put(
        "/v1/events/types/order.shipped",
        json={"templates": ["password_changed"]},
        headers=bearer(tenant),
    )
    assert custom.status_code == 200
    listed = await client.get("/v1/events/types", headers=bearer(tenant))
    assert [t["type"] for t in listed.json()["data"]] == [
        "order.shipped",
        "user.activated",
        "user.password_changed",
        "user.profile_incomplete",
        "user.signed_up",
    ]


async def test_mapping_to_an_unknown_template_is_422_by_index(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await client.put(
        "/v1/events/types/order.shipped",
        json={"templates": ["welcome", "nope"]},
        headers=bearer(tenant),
    )
    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["loc"] == ["body", "templates", 1]


async def test_remapping_needs_admin(client: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await client.put(
        "/v1/events/types/order.shipped",
        json={"templates": ["welcome"]},
        headers=bearer(tenant, ["messages:send", "messages:read"]),
    )
    assert response.status_code == 403
