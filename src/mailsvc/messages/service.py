"""Accepting messages and reading them back, always within one tenant."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.auth.service import TenantInfo
from mailsvc.config import settings
from mailsvc.errors import Conflict, FieldError, NotFound, ValidationFailed
from mailsvc.kit.ids import uuid7
from mailsvc.kit.outbox import enqueue
from mailsvc.kit.pagination import encode_cursor
from mailsvc.kit.time import Clock, utcnow
from mailsvc.messages import schemas
from mailsvc.messages.repository import ListFilters, MessageRepository
from mailsvc.metrics import MESSAGES_ACCEPTED
from mailsvc.models import Message, MessageEvent, MessageStatus
from mailsvc.worker import queues

SEND_TASK = "messages.send"


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
        sender = schemas.Address(email=tenant.default_sender)
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


def build_message(
    tenant: TenantInfo,
    body: schemas.MessageCreate,
    *,
    lane: str,
    clock: Clock = utcnow,
    loc: tuple[str | int, ...] = ("body",),
) -> Message:
    """A new queued message row (not yet added to a session)."""
    sender = _resolve_sender(tenant, body, loc)
    message_id = uuid7()
    now = clock()
    domain = sender.email.rpartition("@")[2]
    recipients = [a.email.lower() for a in (*body.to, *body.cc, *body.bcc)]
    return Message(
        id=message_id,
        tenant_id=tenant.id,
        status=MessageStatus.queued.value,
        lane=lane,
        priority=body.priority,
        sender=_address(sender),
        to=[_address(a) for a in body.to],
        cc=[_address(a) for a in body.cc],
        bcc=[_address(a) for a in body.bcc],
        reply_to=_address(body.reply_to) if body.reply_to else None,
        recipients=list(dict.fromkeys(recipients)),
        subject=body.subject,
        text_body=body.text,
        html_body=body.html,
        template=None,
        variables=None,
        headers=body.headers,
        tags=body.tags,
        meta=body.metadata,
        send_at=None,
        # not_before is left to the database's now(): the claim compares it with the database
        # clock, and an API host whose clock runs ahead would otherwise strand the row.
        lease_until=None,
        enqueued_at=now if queues.published_at_once(lane) else None,
        attempt_count=0,
        message_id_header=f"<{message_id.hex}@{domain}>",
        created_at=now,
        updated_at=now,
    )


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
    by_queue: dict[str, list[str]] = defaultdict(list)
    for message in messages:
        MESSAGES_ACCEPTED.labels(message.lane).inc()
        if message.enqueued_at is not None:
            by_queue[queues.queue_for(message.lane, message.status)].append(str(message.id))
    for queue, ids in by_queue.items():
        for start in range(0, len(ids), batch_size):
            enqueue(session, SEND_TASK, queue=queue, ids=ids[start : start + batch_size])


@dataclass(frozen=True)
class Accepted:
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
) -> Accepted:
    message = build_message(tenant, body, lane=queues.lane_for(body.priority))
    if idempotency_key is not None:
        message.idempotency_key = idempotency_key
        message.request_hash = request_hash(body)
        earlier = await _insert_unless_key_taken(session, message, idempotency_key)
        if earlier is not None:
            if earlier.request_hash != message.request_hash:
                raise Conflict(
                    f"Idempotency-Key {idempotency_key!r} was used with a different body "
                    f"(message {earlier.id})"
                )
            repo = MessageRepository(session)
            return Accepted(message=(await _present_all(repo, [earlier]))[0], created=False)
    await accept_messages(session, [message], already_inserted=idempotency_key is not None)
    accepted = schemas.Event(type="accepted", at=message.created_at, detail={})
    return Accepted(message=present(message, attempts=[], events=[accepted]), created=True)


async def _insert_unless_key_taken(
    session: AsyncSession, message: Message, key: str
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
        if earlier.created_at > utcnow() - timedelta(hours=settings.idempotency_ttl_hours):
            return earlier
        await repo.release_idempotency_key(earlier.id)
    raise Conflict("the Idempotency-Key is contended; try again")


async def send_batch(
    session: AsyncSession, tenant: TenantInfo, bodies: Sequence[schemas.MessageCreate]
) -> list[schemas.Message]:
    """All or nothing: every message is checked before any is stored, and every error listed."""
    messages: list[Message] = []
    errors: list[FieldError] = []
    for index, body in enumerate(bodies):
        try:
            messages.append(
                build_message(
                    tenant,
                    body,
                    lane=queues.lane_for(body.priority, batch=True),
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
    await accept_messages(session, messages, batch_size=settings.bulk_batch_size)
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
