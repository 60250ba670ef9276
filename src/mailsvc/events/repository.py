"""Every query on event mappings."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.models import EventMapping


class EventMappingRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, tenant_id: uuid.UUID, event_type: str) -> EventMapping | None:
        result = await self.session.execute(
            select(EventMapping).where(
                EventMapping.tenant_id == tenant_id, EventMapping.type == event_type
            )
        )
        return result.scalar_one_or_none()

    async def all(self, tenant_id: uuid.UUID) -> list[EventMapping]:
        result = await self.session.execute(
            select(EventMapping)
            .where(EventMapping.tenant_id == tenant_id)
            .order_by(EventMapping.type)
        )
        return list(result.scalars())

    async def put(
        self, tenant_id: uuid.UUID, event_type: str, templates: Sequence[str], priority: str
    ) -> EventMapping:
        statement = (
            pg_insert(EventMapping)
            .values(
                tenant_id=tenant_id, type=event_type, templates=list(templates), priority=priority
            )
            .on_conflict_do_update(
                index_elements=[EventMapping.tenant_id, EventMapping.type],
                set_={"templates": list(templates), "priority": priority, "updated_at": func.now()},
            )
            .returning(EventMapping)
            .execution_options(populate_existing=True)
        )
        return (await self.session.execute(statement)).scalar_one()
