"""Turning a user event into its emails, and the per-tenant mapping of events to templates.

`user.signed_up` creates or updates the contact (signed_up_at) and sends the confirmation, then
the welcome email: the second is held until the first is sent or has failed, so they arrive in
that order. `user.activated` sets activated_at and cancels any activation reminder not yet sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.auth.service import TenantInfo
from mailsvc.contacts import service as contacts
from mailsvc.contacts.schemas import ContactFields
from mailsvc.errors import FieldError, ValidationFailed
from mailsvc.events import schemas
from mailsvc.events.repository import EventMappingRepository
from mailsvc.kit.time import Clock, utcnow
from mailsvc.messages import schemas as message_schemas
from mailsvc.messages import service as messages
from mailsvc.messages.repository import MessageRepository
from mailsvc.models import Contact, EventMapping, Message
from mailsvc.templates.service import TemplateLookup

SIGNED_UP = "user.signed_up"
ACTIVATED = "user.activated"
ACTIVATION_REMINDER = "activation_reminder"


@dataclass(frozen=True)
class BuiltinEvent:
    templates: tuple[str, ...]
    effects: str
    priority: str = "high"


BUILTIN_EVENTS: dict[str, BuiltinEvent] = {
    SIGNED_UP: BuiltinEvent(
        ("account_confirmation", "welcome"),
        "creates or updates the contact and sets signed_up_at (data.signed_up_at, or now); "
        "account_confirmation needs data.confirm_url",
    ),
    ACTIVATED: BuiltinEvent(
        (), "sets the contact's activated_at and cancels a pending activation reminder"
    ),
    "user.password_changed": BuiltinEvent(("password_changed",), "creates or updates the contact"),
    "user.profile_incomplete": BuiltinEvent(
        ("profile_reminder",), "creates or updates the contact"
    ),
}


async def _mapping(session: AsyncSession, tenant: TenantInfo, event_type: str) -> schemas.EventType:
    own = await EventMappingRepository(session).get(tenant.id, event_type)
    return _event_type(event_type, own)


def _event_type(event_type: str, own: EventMapping | None) -> schemas.EventType:
    """The tenant's own mapping of a type, else the built-in one; unknown types are a 422."""
    builtin = BUILTIN_EVENTS.get(event_type)
    if own is not None:
        return schemas.EventType(
            type=event_type,
            templates=list(own.templates),
            priority=own.priority,
            builtin=builtin is not None,
            customised=True,
            effects=builtin.effects if builtin else "sends its templates to the contact",
        )
    if builtin is None:
        known = ", ".join(sorted(BUILTIN_EVENTS))
        problem = f"unknown event type {event_type!r}: use one of {known}, or map it first"
        raise ValidationFailed(problem, errors=[FieldError(("body", "type"), problem)])
    return schemas.EventType(
        type=event_type,
        templates=list(builtin.templates),
        priority=builtin.priority,
        builtin=True,
        customised=False,
        effects=builtin.effects,
    )


def _contact_fields(
    body: schemas.EventCreate, now: datetime
) -> tuple[ContactFields, datetime | None]:
    """The contact's fields to write, and for `user.activated`, when it activated (set only if
    the contact has no activation yet: the first one counts)."""
    given = body.contact.model_dump(include=body.contact.model_fields_set - {"email"})
    if body.type == SIGNED_UP and "signed_up_at" not in given:
        given["signed_up_at"] = body.data.get("signed_up_at", now)
    activated = None
    if body.type == ACTIVATED and "activated_at" not in given:
        activated = {"activated_at": body.data.get("activated_at", now)}
    try:
        fields = ContactFields.model_validate(given)
        at = ContactFields.model_validate(activated).activated_at if activated else None
    except ValueError as exc:  # a data.signed_up_at that is not a time with an offset
        problem = f"data: {exc}".splitlines()[0]
        raise ValidationFailed(problem, errors=[FieldError(("body", "data"), str(exc))]) from exc
    return fields, at


async def record_event(
    session: AsyncSession,
    tenant: TenantInfo,
    body: schemas.EventCreate,
    *,
    clock: Clock = utcnow,
) -> list[message_schemas.Message]:
    mapping = await _mapping(session, tenant, body.type)
    now = clock()
    fields, activated_at = _contact_fields(body, now)
    contact, _ = await contacts.upsert_contact(
        session, tenant.id, body.contact.email, fields, clock=clock, loc=("body", "contact")
    )
    if activated_at is not None:
        contact = (
            await contacts.set_activated(session, tenant.id, contact.email, activated_at) or contact
        )
    if body.type == ACTIVATED:
        await MessageRepository(session).cancel_pending(
            tenant.id, template=ACTIVATION_REMINDER, recipient=contact.email, reason=ACTIVATED
        )
    rows = await _emails(session, tenant, body, contact, mapping, clock=clock)
    await messages.accept_messages(session, rows)
    return [messages.present(m, attempts=[], events=[]) for m in rows]


async def _emails(
    session: AsyncSession,
    tenant: TenantInfo,
    body: schemas.EventCreate,
    contact: Contact,
    mapping: schemas.EventType,
    *,
    clock: Clock,
) -> list[Message]:
    """The event's emails in order, each held until the one before it has gone."""
    variables = {
        "contact": contacts.contact_variables(contact),
        "data": body.data,
        "event": {"type": body.type},
    }
    recipient = message_schemas.Address.model_construct(email=contact.email, name=contact.name)
    lookup = TemplateLookup(session, tenant.id, variables_loc=("body", "data"))
    rows: list[Message] = []
    for name in mapping.templates:
        message_body = messages.template_request(
            template=name,
            to=recipient,
            variables=variables,
            priority=mapping.priority,
            tags=[body.type],
            metadata={"event": body.type},
        )
        message = await messages.prepare_message(
            session, tenant, message_body, templates=lookup, clock=clock, loc=("body",)
        )
        if rows:
            messages.hold_after(message, rows[-1], clock=clock)
        rows.append(message)
    return rows


async def list_event_types(session: AsyncSession, tenant: TenantInfo) -> schemas.EventTypeList:
    own = {m.type: m for m in await EventMappingRepository(session).all(tenant.id)}
    types = sorted(set(BUILTIN_EVENTS) | set(own))
    return schemas.EventTypeList(data=[_event_type(t, own.get(t)) for t in types])


async def put_event_type(
    session: AsyncSession, tenant: TenantInfo, event_type: str, body: schemas.EventTypeUpdate
) -> schemas.EventType:
    lookup = TemplateLookup(session, tenant.id)
    for index, name in enumerate(body.templates):
        await lookup.source(name, loc=("body", "templates", index))
    own = await EventMappingRepository(session).put(
        tenant.id, event_type, body.templates, body.priority
    )
    return _event_type(event_type, own)
