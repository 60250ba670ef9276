"""Accepting messages and reading them back, always within one tenant."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.auth.service import TenantInfo
from mailsvc.errors import Conflict, FieldError, NotFound, ValidationFailed
from mailsvc.kit.ids import uuid7
from mailsvc.kit.pagination import encode_cursor
from mailsvc.kit.time import Clock, utcnow
from mailsvc.messages import schemas
from mailsvc.messages.repository import ListFilters, MessageRepository
from mailsvc.metrics import MESSAGES_ACCEPTED
from mailsvc.models import Message, MessageEvent, MessageStatus
from mailsvc.sending.lanes import enqueue_sends, lane_for, published_at_once
from mailsvc.templates.engine import Rendered
from mailsvc.templates.service import TemplateLookup, with_defaults


def _address(value: schemas.Address) -> dict[str, Any]:
    return {"email": value.email, "name": value.name}


def _resolve_sender(
    tenant: TenantInfo, body: schemas.MessageCreate, loc: tuple[str | int, ...]
) -> schemas.Address:
    sender = body.from_
    if sender is None:
        if tenant.default_sender is None:
            raise ValidationFailed(
                "no sender given and the tenant has no default sender",
                errors=[FieldError((*loc, "from"), "required: the tenant has no default sender")],
            )
        sender = schemas.Address(email=tenant.default_sender, name=tenant.default_sender_name)
    if not tenant.may_send_from(sender.email):
        allowed = ", ".join(sorted(tenant.allowed_domains))
        raise ValidationFailed(
            f"sender domain of {sender.email!r} is not one of this tenant's domains",
            errors=[
                FieldError(
                    (*loc, "from"),
                    f"the domain of {sender.email!r} is not one of the tenant's sender domains "
                    f"({allowed})",
                )
            ],
        )
    return sender


SEND_AT_GRACE = timedelta(seconds=30)  # a send_at this close behind the server's clock is "now"
SEND_AT_HORIZON = timedelta(days=365)
DEFAULT_KEY_TTL = timedelta(hours=24)  # how long an Idempotency-Key is kept (the API's default)
# A follower (an event's second email) waits for the one before it; should that never finish,
# it goes anyway after this long.
FOLLOWER_BACKSTOP = timedelta(hours=24)


def _send_at(
    body: schemas.MessageCreate, now: datetime, loc: tuple[str | int, ...]
) -> datetime | None:
    """The time a scheduled message is due, or None to send it now."""
    if body.send_at is None:
        return None
    at = body.send_at.astimezone(UTC)
    if at < now - SEND_AT_GRACE:
        problem = f"send_at {body.send_at.isoformat()} is in the past"
    elif at > now + SEND_AT_HORIZON:
        problem = f"send_at {body.send_at.isoformat()} is more than 1 year ahead"
    else:
        return at if at > now else None
    raise ValidationFailed(problem, errors=[FieldError((*loc, "send_at"), problem)])


def build_message(
    tenant: TenantInfo,
    body: schemas.MessageCreate,
    *,
    lane: str,
    priority: str | None = None,
    rendered: Rendered | None = None,
    clock: Clock = utcnow,
    loc: tuple[str | int, ...] = ("body",),
) -> Message:
    """A new message row (not yet added to a session): queued, or scheduled for its send_at."""
    sender = _resolve_sender(tenant, body, loc)
    message_id = uuid7()
    now = clock()
    send_at = _send_at(body, now, loc)
    domain = sender.email.rpartition("@")[2]
    recipients = [a.email.lower() for a in (*body.to, *body.cc, *body.bcc)]
    subject, text_body, html_body = body.subject, body.text, body.html
    if rendered is not None:  # the body's own parts, where given, override the template's
        subject = subject or rendered.subject
        text_body = text_body if text_body is not None else rendered.text
        html_body = html_body if html_body is not None else rendered.html
    message = Message(
        id=message_id,
        tenant_id=tenant.id,
        status=MessageStatus.scheduled if send_at else MessageStatus.queued,
        lane=lane,
        priority=priority or body.priority or "high",
        sender=_address(sender),
        to=[_address(a) for a in body.to],
        cc=[_address(a) for a in body.cc],
        bcc=[_address(a) for a in body.bcc],
        reply_to=_address(body.reply_to) if body.reply_to else None,
        recipients=list(dict.fromkeys(recipients)),
        subject=subject,
        text_body=text_body,
        html_body=html_body,
        template=body.template,
        variables=body.variables,
        headers=body.headers,
        tags=body.tags,
        meta=body.metadata,
        send_at=send_at,
        lease_until=None,
        enqueued_at=now if published_at_once(lane) and not send_at else None,
        attempt_count=0,
        message_id_header=f"<{message_id.hex}@{domain}>",
        created_at=now,
        updated_at=now,
    )
    if send_at is not None:
        # Otherwise not_before is left to the database's now(): the claim compares it with the
        # database clock, and an API host whose clock runs ahead would otherwise strand the row.
        message.not_before = send_at
    return message


async def accept_messages(
    session: AsyncSession,
    messages: Sequence[Message],
    *,
    batch_size: int = 1,
    already_inserted: bool = False,
) -> None:
    """Store new messages and enqueue their first send, in jobs of `batch_size` ids per lane."""
    if not already_inserted:
        session.add_all(messages)
    session.add_all(
        MessageEvent(message_id=m.id, type="accepted", at=m.created_at, detail={}) for m in messages
    )
    await session.flush()
    for message in messages:
        MESSAGES_ACCEPTED.labels(message.lane).inc()
    # Bulk and scheduled messages wait parked: the feeder and the dispatcher publish them.
    published = (m for m in messages if m.enqueued_at is not None)
    enqueue_sends(session, published, ids_per_job=batch_size)


async def prepare_message(
    session: AsyncSession,
    tenant: TenantInfo,
    body: schemas.MessageCreate,
    *,
    batch: bool = False,
    templates: TemplateLookup | None = None,
    clock: Clock = utcnow,
    loc: tuple[str | int, ...] = ("body",),
) -> Message:
    """A message row from a request body: its template rendered, its lane and priority chosen.

    A template that fails to render (unknown, a missing variable) is a 422 here, never a blank.
    """
    rendered: Rendered | None = None
    transactional = True
    if body.template is not None:
        lookup = templates or TemplateLookup(session, tenant.id)
        source = await lookup.source(body.template, loc=(*loc, "template"))
        variables = with_defaults(
            body.variables or {}, tenant_name=tenant.name, recipient=_address(body.to[0])
        )
        rendered = await lookup.render(source, variables, loc=loc)
        transactional = source.transactional
    priority = body.priority or ("high" if transactional else "normal")
    return build_message(
        tenant,
        body,
        lane=lane_for(priority, batch=batch),
        priority=priority,
        rendered=rendered,
        clock=clock,
        loc=loc,
    )


def hold_after(follower: Message, leader: Message, *, clock: Clock = utcnow) -> None:
    """Keep `follower` back until `leader` is sent or has failed (see FOLLOWER_BACKSTOP)."""
    follower.status = MessageStatus.scheduled
    follower.after_message_id = leader.id
    follower.enqueued_at = None
    follower.not_before = (leader.send_at or clock()) + FOLLOWER_BACKSTOP


def template_request(
    *,
    template: str,
    to: schemas.Address,
    variables: dict[str, Any],
    priority: schemas.Priority,
    tags: Sequence[str] = (),
    metadata: dict[str, str] | None = None,
) -> schemas.MessageCreate:
    """The request body mailsvc makes itself for a template email to one address (already valid)."""
    return schemas.MessageCreate.model_construct(
        to=[to],
        cc=[],
        bcc=[],
        from_=None,
        reply_to=None,
        subject=None,
        text=None,
        html=None,
        headers={},
        tags=list(tags),
        metadata=metadata or {},
        template=template,
        variables=variables,
        priority=priority,
        send_at=None,
    )


def templated_message(
    tenant: TenantInfo,
    *,
    template: str,
    to: schemas.Address,
    variables: dict[str, Any],
    lane: str,
    priority: schemas.Priority = "normal",
    tags: Sequence[str] = (),
    clock: Clock = utcnow,
) -> Message:
    """A message a scheduled job makes: the worker renders its template when it sends it."""
    variables = with_defaults(variables, tenant_name=tenant.name, recipient=_address(to))
    body = template_request(
        template=template, to=to, variables=variables, priority=priority, tags=tags
    )
    return build_message(tenant, body, lane=lane, priority=priority, clock=clock)


async def cancel_message(
    session: AsyncSession, tenant: TenantInfo, message_id: uuid.UUID
) -> schemas.Message:
    """Cancel a message that no worker has claimed yet; 409 once one has."""
    repo = MessageRepository(session)
    if not await repo.cancel(tenant.id, message_id, reason="cancelled by the API"):
        message = await repo.get(tenant.id, message_id)
        if message is None:
            raise NotFound(f"message {message_id} does not exist")
        raise Conflict(
            f"message {message_id} is {message.status}: only scheduled, queued or retrying "
            "messages can be cancelled"
        )
    return await get_message(session, tenant, message_id)


@dataclass(frozen=True)
class Acceptance:
    """A message the API accepted, and whether this request made it."""

    message: schemas.Message
    created: bool  # False: an earlier request with the same Idempotency-Key made it


def request_hash(body: schemas.MessageCreate) -> str:
    """The body as parsed (defaults filled, addresses normalised): the same request hashes alike."""
    canonical = json.dumps(body.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def send_message(
    session: AsyncSession,
    tenant: TenantInfo,
    body: schemas.MessageCreate,
    *,
    idempotency_key: str | None = None,
    key_ttl: timedelta = DEFAULT_KEY_TTL,
) -> Acceptance:
    """Accept one message; with an Idempotency-Key, a replay within `key_ttl` returns the
    message the key made."""
    message = await prepare_message(session, tenant, body)
    if idempotency_key is not None:
        message.idempotency_key = idempotency_key
        message.request_hash = request_hash(body)
        earlier = await _insert_unless_key_taken(session, message, idempotency_key, key_ttl)
        if earlier is not None:
            if earlier.request_hash != message.request_hash:
                raise Conflict(
                    f"Idempotency-Key {idempotency_key!r} was used with a different body "
                    f"(message {earlier.id})"
                )
            repo = MessageRepository(session)
            return Acceptance(message=(await _present_all(repo, [earlier]))[0], created=False)
    await accept_messages(session, [message], already_inserted=idempotency_key is not None)
    accepted = schemas.Event(type="accepted", at=message.created_at, detail={})
    return Acceptance(message=present(message, attempts=[], events=[accepted]), created=True)


async def _insert_unless_key_taken(
    session: AsyncSession, message: Message, key: str, ttl: timedelta
) -> Message | None:
    """Insert the message, or return the live message that already holds its key.

    The unique index decides, not a check-then-insert: of two identical requests racing, the
    second waits on the first's row and then finds it. A key older than the TTL is released
    and the insert tried again.
    """
    repo = MessageRepository(session)
    for _ in range(3):
        if await repo.insert_if_key_free(message):
            return None
        earlier = await repo.by_idempotency_key(message.tenant_id, key)
        if earlier is None:  # the holder was rolled back or released meanwhile
            continue
        if earlier.created_at > utcnow() - ttl:
            return earlier
        await repo.release_idempotency_key(earlier.id)
    raise Conflict("the Idempotency-Key is contended; try again")


async def send_batch(
    session: AsyncSession, tenant: TenantInfo, bodies: Sequence[schemas.MessageCreate]
) -> list[schemas.Message]:
    """All or nothing: every message is checked before any is stored, and every error listed."""
    messages: list[Message] = []
    errors: list[FieldError] = []
    templates = TemplateLookup(session, tenant.id)  # each template looked up once per batch
    for index, body in enumerate(bodies):
        try:
            messages.append(
                await prepare_message(
                    session,
                    tenant,
                    body,
                    batch=True,
                    templates=templates,
                    loc=("body", "messages", index),
                )
            )
        except ValidationFailed as exc:
            errors.extend(exc.errors)
    if errors:
        raise ValidationFailed(
            f"{len(errors)} of {len(bodies)} messages are invalid; none was accepted",
            errors=errors,
        )
    await accept_messages(session, messages)  # bulk: parked for the feeder, nothing to publish
    return [
        present(m, attempts=[], events=[schemas.Event(type="accepted", at=m.created_at, detail={})])
        for m in messages
    ]


async def get_message(
    session: AsyncSession, tenant: TenantInfo, message_id: uuid.UUID
) -> schemas.Message:
    repo = MessageRepository(session)
    message = await repo.get(tenant.id, message_id)
    if message is None:
        raise NotFound(f"message {message_id} does not exist")
    return (await _present_all(repo, [message]))[0]


async def list_messages(
    session: AsyncSession,
    tenant: TenantInfo,
    filters: ListFilters,
    *,
    before: uuid.UUID | None,
    limit: int,
) -> schemas.MessagePage:
    repo = MessageRepository(session)
    rows = await repo.page(tenant.id, filters, before=before, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return schemas.MessagePage(
        data=await _present_all(repo, rows),
        next_cursor=encode_cursor(rows[-1].id) if more and rows else None,
    )


async def _present_all(repo: MessageRepository, rows: Sequence[Message]) -> list[schemas.Message]:
    ids = [m.id for m in rows]
    attempts: dict[uuid.UUID, list[schemas.Attempt]] = defaultdict(list)
    events: dict[uuid.UUID, list[schemas.Event]] = defaultdict(list)
    if ids:
        for attempt in await repo.attempts_for(ids):
            attempts[attempt.message_id].append(
                schemas.Attempt.model_validate(attempt, from_attributes=True)
            )
        for event in await repo.events_for(ids):
            events[event.message_id].append(
                schemas.Event(type=event.type, at=event.at, detail=event.detail)
            )
    return [present(m, attempts=attempts[m.id], events=events[m.id]) for m in rows]


def present(
    message: Message, *, attempts: list[schemas.Attempt], events: list[schemas.Event]
) -> schemas.Message:
    return schemas.Message(
        id=message.id,
        status=message.status,
        from_=schemas.Address.model_construct(**message.sender),
        to=[schemas.Address.model_construct(**a) for a in message.to],
        cc=[schemas.Address.model_construct(**a) for a in message.cc],
        subject=message.subject,
        template=message.template,
        tags=list(message.tags),
        metadata=dict(message.meta),
        priority=message.priority,
        send_at=message.send_at,
        created_at=message.created_at,
        sent_at=message.sent_at,
        provider=message.provider,
        provider_message_id=message.provider_message_id,
        message_id_header=message.message_id_header,
        attempt_count=message.attempt_count,
        error_code=message.error_code,
        error=message.error,
        attempts=attempts,
        events=events,
    )
