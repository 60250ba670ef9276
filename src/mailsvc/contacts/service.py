"""Storing contacts and reading them back, always within one tenant.

Other domains call `upsert_contact`, `set_activated` and `get_contact` (the events domain does,
when a tenant reports that a user signed up or activated).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.contacts import schemas
from mailsvc.contacts.repository import ContactRepository
from mailsvc.errors import FieldError, NotFound, ValidationFailed
from mailsvc.kit.pagination import encode_cursor
from mailsvc.kit.time import Clock, utcnow
from mailsvc.models import Contact

# How far ahead of our clock a client's timestamps may be: their clocks drift too.
CLOCK_SKEW = timedelta(minutes=5)


def _normalised(email: str) -> str | None:
    try:
        return schemas.normalise_contact_email(email)
    except ValueError:
        return None


def _check_not_in_future(
    fields: schemas.ContactFields, now: datetime, loc: tuple[str | int, ...]
) -> None:
    errors = []
    # A birthday is a calendar date where the contact lives: today in Auckland can be
    # tomorrow in UTC. When the body gives no zone, the default (UTC) is the judge.
    today = now.astimezone(ZoneInfo(fields.timezone)).date()
    if fields.birthday is not None and fields.birthday > today:
        errors.append(FieldError((*loc, "birthday"), "birthday is in the future"))
    latest = now + CLOCK_SKEW
    if fields.signed_up_at is not None and fields.signed_up_at > latest:
        errors.append(FieldError((*loc, "signed_up_at"), "signed_up_at is in the future"))
    if fields.activated_at is not None and fields.activated_at > latest:
        errors.append(FieldError((*loc, "activated_at"), "activated_at is in the future"))
    if errors:
        raise ValidationFailed.listing(errors)


async def upsert_contact(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    email: str,
    fields: schemas.ContactFields,
    *,
    clock: Clock = utcnow,
    loc: tuple[str | int, ...] = ("body",),
) -> tuple[Contact, bool]:
    """Create the contact, or update it: only the fields set on `fields` are written, so the
    others keep their stored values. Returns the row and whether it was created.

    `email` may be given as the client wrote it; it is normalised here (idempotently).
    """
    normalised = _normalised(email)
    if normalised is None:
        message = f"{email!r} is not a valid email address"
        raise ValidationFailed(message, errors=[FieldError(("email",), message)])
    _check_not_in_future(fields, clock(), loc)
    return await ContactRepository(session).upsert(
        tenant_id,
        normalised,
        fields.model_dump(),
        update_columns=fields.model_fields_set,
    )


async def set_activated(
    session: AsyncSession, tenant_id: uuid.UUID, email: str, at: datetime
) -> Contact | None:
    """Record when the contact activated, unless that is already known; None if no such contact."""
    if at.tzinfo is None:
        raise ValueError("activated_at must be timezone-aware")
    normalised = _normalised(email)
    if normalised is None:
        return None
    return await ContactRepository(session).set_activated(tenant_id, normalised, at)


async def get_contact(session: AsyncSession, tenant_id: uuid.UUID, email: str) -> Contact | None:
    normalised = _normalised(email)
    if normalised is None:
        return None
    return await ContactRepository(session).get(tenant_id, normalised)


async def read_contact(session: AsyncSession, tenant_id: uuid.UUID, email: str) -> Contact:
    contact = await get_contact(session, tenant_id, email)
    if contact is None:
        raise NotFound(f"contact {email} does not exist")
    return contact


async def delete_contact(session: AsyncSession, tenant_id: uuid.UUID, email: str) -> None:
    normalised = _normalised(email)
    if normalised is None or not await ContactRepository(session).delete(tenant_id, normalised):
        raise NotFound(f"contact {email} does not exist")


async def list_contacts(
    session: AsyncSession, tenant_id: uuid.UUID, *, before: uuid.UUID | None, limit: int
) -> schemas.ContactPage:
    rows = await ContactRepository(session).page(tenant_id, before=before, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return schemas.ContactPage(
        data=[present(c) for c in rows],
        next_cursor=encode_cursor(rows[-1].id) if more and rows else None,
    )


def present(contact: Contact) -> schemas.Contact:
    return schemas.Contact.model_validate(contact, from_attributes=True)


def contact_variables(contact: Any) -> dict[str, Any]:
    """A contact as templates see it: `contact.email`, `contact.name`, `contact.attributes`…"""
    birthday = getattr(contact, "birthday", None)
    signed_up_at = getattr(contact, "signed_up_at", None)
    return {
        "email": contact.email,
        "name": contact.name,
        "timezone": getattr(contact, "timezone", "UTC"),
        "birthday": birthday.isoformat() if birthday else None,
        "signed_up_at": signed_up_at.isoformat() if signed_up_at else None,
        "attributes": dict(getattr(contact, "attributes", None) or {}),
    }
