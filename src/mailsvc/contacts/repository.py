"""Every query on contacts. Always within one tenant."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, case, delete, func, literal, literal_column, select, update
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.kit.ids import uuid7
from mailsvc.models import Contact

# On the row an INSERT … ON CONFLICT made, xmax is 0; on a row it updated, it is our xid.
_CREATED = literal_column("xmax = 0", Boolean).label("created")


class ContactRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def upsert(
        self,
        tenant_id: uuid.UUID,
        email: str,
        values: Mapping[str, Any],
        *,
        update_columns: Collection[str],
    ) -> tuple[Contact, bool]:
        """Insert the contact with `values`, or set only `update_columns` on the existing one.

        One statement, so two requests for the same address cannot both insert.
        """
        statement = pg_insert(Contact).values(
            id=uuid7(), tenant_id=tenant_id, email=email, **values
        )
        statement = statement.on_conflict_do_update(
            index_elements=[Contact.tenant_id, Contact.email],
            set_={
                **{column: statement.excluded[column] for column in update_columns},
                "updated_at": func.now(),
            },
        )
        result = await self.session.execute(
            statement.returning(Contact, _CREATED),
            execution_options={"populate_existing": True},
        )
        contact, created = result.one()
        return contact, bool(created)

    async def get(self, tenant_id: uuid.UUID, email: str) -> Contact | None:
        result = await self.session.execute(
            select(Contact).where(Contact.tenant_id == tenant_id, Contact.email == email)
        )
        return result.scalar_one_or_none()

    async def set_activated(self, tenant_id: uuid.UUID, email: str, at: datetime) -> Contact | None:
        """Record the first activation only; the row as it stands afterwards, None if absent."""
        result = await self.session.execute(
            update(Contact)
            .where(Contact.tenant_id == tenant_id, Contact.email == email)
            .values(
                activated_at=func.coalesce(
                    Contact.activated_at, literal(at, TIMESTAMP(timezone=True))
                ),
                updated_at=case(
                    (Contact.activated_at.is_(None), func.now()), else_=Contact.updated_at
                ),
            )
            .returning(Contact),
            execution_options={"populate_existing": True},
        )
        return result.scalar_one_or_none()

    async def delete(self, tenant_id: uuid.UUID, email: str) -> bool:
        result = await self.session.execute(
            delete(Contact)
            .where(Contact.tenant_id == tenant_id, Contact.email == email)
            .returning(Contact.id)
        )
        return result.scalar_one_or_none() is not None

    async def page(
        self, tenant_id: uuid.UUID, *, before: uuid.UUID | None, limit: int
    ) -> list[Contact]:
        query = select(Contact).where(Contact.tenant_id == tenant_id)
        if before is not None:
            query = query.where(Contact.id < before)
        result = await self.session.execute(query.order_by(Contact.id.desc()).limit(limit))
        return list(result.scalars())
