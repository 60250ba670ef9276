"""Small async factories for rows the tests need."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.auth.service import tenant_info
from mailsvc.messages import service
from mailsvc.messages.schemas import MessageCreate
from mailsvc.models import Tenant
from mailsvc.sending.lanes import Lane


async def queue_messages(
    session: AsyncSession,
    tenant: Tenant,
    count: int,
    *,
    batch_size: int = 1,
    lane: str = Lane.transactional,
) -> list[uuid.UUID]:
    """Accepted messages; transactional ones are published at once, bulk ones wait parked."""
    rows = [
        service.build_message(
            tenant_info(tenant),
            MessageCreate.model_validate(
                {"to": [f"user{i}@example.net"], "subject": f"Message {i}", "text": "Body"}
            ),
            lane=lane,
        )
        for i in range(count)
    ]
    await service.accept_messages(session, rows, batch_size=batch_size)
    await session.commit()
    return [row.id for row in rows]
