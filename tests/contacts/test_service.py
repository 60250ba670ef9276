"""The contacts service as other domains call it: upsert, set_activated, get_contact."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.contacts import service
from mailsvc.contacts.schemas import ContactFields, normalise_contact_email
from mailsvc.errors import FieldError, ValidationFailed
from mailsvc.models import Tenant
from tests.support.auth import TenantFactory

NOON = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def at_noon() -> datetime:
    return NOON


async def test_partial_upserts_fill_a_contact_in(session: AsyncSession, tenant: Tenant) -> None:
    """What the events domain does: signed_up first, a name later; neither erases the other."""
    signed_up = ContactFields.model_validate({"signed_up_at": "2026-06-15T11:00:00+02:00"})
    contact, created = await service.upsert_contact(
        session, tenant.id, "Ada@Example.NET", signed_up, clock=at_noon
    )
    assert created is True
    assert contact.email == "ada@example.net"
    assert contact.signed_up_at == datetime(2026, 6, 15, 9, 0, tzinfo=UTC)
    assert contact.timezone == "UTC"
    assert contact.attributes == {}

    named = ContactFields(name="Ada", attributes={"plan": "pro"})
    again, created = await service.upsert_contact(
        session, tenant.id, "ada@example.net", named, clock=at_noon
    )
    assert created is False
    assert again.id == contact.id
    assert (again.name, again.attributes) == ("Ada", {"plan": "pro"})
    assert again.signed_up_at == datetime(2026, 6, 15, 9, 0, tzinfo=UTC)
    assert again.timezone == "UTC"


async def test_birthday_is_judged_by_the_clock_passed_in(
    session: AsyncSession, tenant: Tenant
) -> None:
    tomorrow = ContactFields(birthday=date(2026, 6, 16))
    with pytest.raises(ValidationFailed) as refused:
        await service.upsert_contact(session, tenant.id, "ada@example.net", tomorrow, clock=at_noon)
    assert refused.value.message == "body.birthday: birthday is in the future"
    assert refused.value.errors == [FieldError(("body", "birthday"), "birthday is in the future")]
    assert await service.get_contact(session, tenant.id, "ada@example.net") is None

    contact, _ = await service.upsert_contact(
        session, tenant.id, "ada@example.net", tomorrow, clock=lambda: NOON + timedelta(days=1)
    )
    assert contact.birthday == date(2026, 6, 16)
    assert contact.birth_md == 616


async def test_birthday_today_where_the_contact_lives(
    session: AsyncSession, tenant: Tenant
) -> None:
    """At noon UTC it is already the 16th in Kiritimati (UTC+14)."""
    born = ContactFields(birthday=date(2026, 6, 16), timezone="Pacific/Kiritimati")
    contact, created = await service.upsert_contact(
        session, tenant.id, "baby@example.net", born, clock=at_noon
    )
    assert created is True
    assert (contact.birthday, contact.timezone) == (date(2026, 6, 16), "Pacific/Kiritimati")


async def test_timestamps_may_lead_the_clock_by_a_little_skew(
    session: AsyncSession, tenant: Tenant
) -> None:
    within = ContactFields(signed_up_at=NOON + timedelta(minutes=4))
    await service.upsert_contact(session, tenant.id, "ada@example.net", within, clock=at_noon)
    beyond = ContactFields(
        signed_up_at=NOON + timedelta(minutes=6), activated_at=NOON + timedelta(days=1)
    )
    with pytest.raises(ValidationFailed) as refused:
        await service.upsert_contact(session, tenant.id, "ada@example.net", beyond, clock=at_noon)
    assert refused.value.errors == [
        FieldError(("body", "signed_up_at"), "signed_up_at is in the future"),
        FieldError(("body", "activated_at"), "activated_at is in the future"),
    ]


async def test_an_invalid_address_is_refused(session: AsyncSession, tenant: Tenant) -> None:
    with pytest.raises(ValidationFailed) as refused:
        await service.upsert_contact(session, tenant.id, "nobody", ContactFields())
    assert refused.value.errors == [FieldError(("email",), "'nobody' is not a valid email address")]
    assert await service.get_contact(session, tenant.id, "nobody") is None
    assert await service.set_activated(session, tenant.id, "nobody", NOON) is None


def test_normalisation_is_idempotent() -> None:
    once = normalise_contact_email("Zoe.Smith@Bücher.Example")
    assert once == "zoe.smith@xn--bcher-kva.example"
    assert normalise_contact_email(once) == once


def test_fields_store_datetimes_in_utc() -> None:
    fields = ContactFields.model_validate({"activated_at": "2026-03-29T01:30:00+14:00"})
    assert fields.activated_at == datetime(2026, 3, 28, 11, 30, tzinfo=UTC)
    assert fields.activated_at is not None
    assert fields.activated_at.tzinfo is UTC


async def test_set_activated_records_the_first_activation_only(
    session: AsyncSession, tenant: Tenant
) -> None:
    await service.upsert_contact(
        session, tenant.id, "ada@example.net", ContactFields(name="Ada"), clock=at_noon
    )
    first = await service.set_activated(session, tenant.id, "ADA@example.net", NOON)
    assert first is not None
    assert (first.email, first.name, first.activated_at) == ("ada@example.net", "Ada", NOON)

    later = await service.set_activated(
        session, tenant.id, "ada@example.net", NOON + timedelta(hours=1)
    )
    assert later is not None
    assert later.activated_at == NOON
    fetched = await service.get_contact(session, tenant.id, "Ada@Example.net")
    assert fetched is not None
    assert fetched.activated_at == NOON


async def test_set_activated_of_an_unknown_contact(session: AsyncSession, tenant: Tenant) -> None:
    assert await service.set_activated(session, tenant.id, "ghost@example.net", NOON) is None
    assert await service.get_contact(session, tenant.id, "ghost@example.net") is None


async def test_set_activated_wants_an_aware_time(session: AsyncSession, tenant: Tenant) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await service.set_activated(
            session, tenant.id, "ada@example.net", NOON.replace(tzinfo=None)
        )


async def test_contacts_belong_to_one_tenant(
    session: AsyncSession, tenant: Tenant, make_tenant: TenantFactory
) -> None:
    other = await make_tenant()
    await service.upsert_contact(session, other.id, "ada@example.net", ContactFields())
    assert await service.get_contact(session, tenant.id, "ada@example.net") is None
    assert await service.set_activated(session, tenant.id, "ada@example.net", NOON) is None
    page = await service.list_contacts(session, tenant.id, before=None, limit=10)
    assert page.data == []
