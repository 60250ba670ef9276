"""Every query on tenants' templates; workers load the ones a batch needs in one statement."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Collection
from typing import Any

from sqlalchemy import ARRAY, Row, Text, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from mailsvc.kit.ids import uuid7
from mailsvc.models import Template
from mailsvc.templates.engine import TemplateSource

_LOAD = text(
    """
    SELECT t.tenant_id, t.name, t.subject, t.text_body, t.html_body, t.transactional, t.version
      FROM templates AS t
      JOIN unnest(:tenant_ids, :names) AS k(tenant_id, name)
        ON t.tenant_id = k.tenant_id AND t.name = k.name
    """
).bindparams(
    bindparam("tenant_ids", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("names", type_=ARRAY(Text)),
)


def source_of(row: Template | Row[Any]) -> TemplateSource:
    """A tenant's row as the engine sees it."""
    return TemplateSource(
        name=row.name,
        subject=row.subject,
        text=row.text_body,
        html=row.html_body,
        transactional=row.transactional,
        version=row.version,
        builtin=False,
    )


class TemplateRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, tenant_id: uuid.UUID, name: str) -> Template | None:
        return await self.session.scalar(
            select(Template).where(Template.tenant_id == tenant_id, Template.name == name)
        )

    async def list(self, tenant_id: uuid.UUID) -> builtins.list[Template]:
        rows = await self.session.scalars(
            select(Template).where(Template.tenant_id == tenant_id).order_by(Template.name)
        )
        return builtins.list(rows)

    async def upsert(
        self,
        tenant_id: uuid.UUID,
        name: str,
        *,
        subject: str,
        text_body: str | None,
        html_body: str | None,
        transactional: bool,
    ) -> Template:
        """Create the template at version 1, or replace it and bump its version, atomically."""
        insert = pg_insert(Template).values(
            id=uuid7(),
            tenant_id=tenant_id,
            name=name,
            subject=subject,
            text_body=text_body,
            html_body=html_body,
            transactional=transactional,
            version=1,
        )
        statement = (
            insert.on_conflict_do_update(
                index_elements=[Template.tenant_id, Template.name],
                set_={
                    "subject": insert.excluded.subject,
                    "text_body": insert.excluded.text_body,
                    "html_body": insert.excluded.html_body,
                    "transactional": insert.excluded.transactional,
                    "version": Template.version + 1,
                    "updated_at": func.now(),
                },
            )
            .returning(Template)
            .execution_options(populate_existing=True)
        )
        return (await self.session.execute(statement)).scalar_one()


async def load_templates(
    connection: AsyncConnection | AsyncSession, keys: Collection[tuple[uuid.UUID, str]]
) -> dict[tuple[uuid.UUID, str], TemplateSource]:
    """The tenants' own templates among `keys` (tenant id, name), in one query.

    Keys without a row are absent from the answer: the caller falls back to the built-ins.
    """
    unique = builtins.list(dict.fromkeys(keys))
    if not unique:
        return {}
    result = await connection.execute(
        _LOAD,
        {"tenant_ids": [k[0] for k in unique], "names": [k[1] for k in unique]},
    )
    return {(row.tenant_id, row.name): source_of(row) for row in result}
