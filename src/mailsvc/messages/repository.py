"""The API's queries on messages: insert under an idempotency key, read, list, cancel."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import inspect, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.models import Attempt, Message, MessageEvent


@dataclass(frozen=True)
class ListFilters:
    status: str | None = None
    tag: str | None = None
    to: str | None = None


# Cancelling works until a worker claims the row: the claim and this UPDATE lock the same row,
# so exactly one of them wins. Followers held behind a cancelled message are released.
_CANCEL = """
    WITH cancelled AS (
        UPDATE messages
           SET status = 'cancelled', enqueued_at = NULL, lease_until = NULL, updated_at = now()
         WHERE tenant_id = :tenant_id AND status IN ('scheduled', 'queued', 'retrying')
           AND {where}
        RETURNING id
    ), logged AS (
        INSERT INTO message_events (message_id, type, detail)
        SELECT id, 'cancelled', jsonb_build_object('reason', CAST(:reason AS text))
          FROM cancelled
    ), followers AS (
        UPDATE messages AS f
           SET not_before = now(), updated_at = now()
          FROM cancelled AS c
         WHERE f.after_message_id = c.id AND f.status = 'scheduled'
    )
    SELECT id FROM cancelled
"""
_CANCEL_BY_ID = text(_CANCEL.format(where="id = :message_id"))
_CANCEL_BY_TEMPLATE = text(
    _CANCEL.format(where="template = :template AND recipients @> ARRAY[CAST(:recipient AS text)]")
)


class MessageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert_if_key_free(self, message: Message) -> bool:
        """INSERT … ON CONFLICT (tenant, idempotency key) DO NOTHING; True when inserted."""
        values = {
            attribute.key: getattr(message, attribute.key)
            for attribute in inspect(Message).column_attrs
            if getattr(message, attribute.key) is not None
        }
        statement = (
            pg_insert(Message)
            .values(values)
            .on_conflict_do_nothing(
                index_elements=[Message.tenant_id, Message.idempotency_key],
                index_where=Message.idempotency_key.is_not(None),
            )
            .returning(Message.id)
        )
        return (await self.session.execute(statement)).first() is not None

    async def by_idempotency_key(self, tenant_id: uuid.UUID, key: str) -> Message | None:
        result = await self.session.execute(
            select(Message)
            .where(Message.tenant_id == tenant_id, Message.idempotency_key == key)
            .execution_options(populate_existing=True)
        )
        return result.scalar_one_or_none()

    async def release_idempotency_key(self, message_id: uuid.UUID) -> None:
        await self.session.execute(
            update(Message).where(Message.id == message_id).values(idempotency_key=None)
        )

    async def cancel(self, tenant_id: uuid.UUID, message_id: uuid.UUID, *, reason: str) -> bool:
        result = await self.session.execute(
            _CANCEL_BY_ID, {"tenant_id": tenant_id, "message_id": message_id, "reason": reason}
        )
        return result.first() is not None

    async def cancel_pending(
        self, tenant_id: uuid.UUID, *, template: str, recipient: str, reason: str
    ) -> list[uuid.UUID]:
        """Cancel every message of this template to this address that no worker has claimed."""
        result = await self.session.execute(
            _CANCEL_BY_TEMPLATE,
            {
                "tenant_id": tenant_id,
                "template": template,
                "recipient": recipient,
                "reason": reason,
            },
        )
        return [row.id for row in result]

    async def get(self, tenant_id: uuid.UUID, message_id: uuid.UUID) -> Message | None:
        result = await self.session.execute(
            select(Message).where(Message.tenant_id == tenant_id, Message.id == message_id)
        )
        return result.scalar_one_or_none()

    async def page(
        self,
        tenant_id: uuid.UUID,
        filters: ListFilters,
        *,
        before: uuid.UUID | None,
        limit: int,
    ) -> list[Message]:
        query = select(Message).where(Message.tenant_id == tenant_id)
        if filters.status:
            query = query.where(Message.status == filters.status)
        if filters.tag:
            query = query.where(Message.tags.contains([filters.tag]))
        if filters.to:
            query = query.where(Message.recipients.contains([filters.to.lower()]))
        if before is not None:
            query = query.where(Message.id < before)
        result = await self.session.execute(query.order_by(Message.id.desc()).limit(limit))
        return list(result.scalars())

    async def attempts_for(self, ids: Sequence[uuid.UUID]) -> list[Attempt]:
        result = await self.session.execute(
            select(Attempt)
            .where(Attempt.message_id.in_(ids))
            .order_by(Attempt.message_id, Attempt.id)
        )
        return list(result.scalars())

    async def events_for(self, ids: Sequence[uuid.UUID]) -> list[MessageEvent]:
        result = await self.session.execute(
            select(MessageEvent)
            .where(MessageEvent.message_id.in_(ids))
            .order_by(MessageEvent.message_id, MessageEvent.id)
        )
        return list(result.scalars())
