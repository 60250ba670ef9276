"""The recurring-send ledger: one row per (tenant, schedule, recipient, period), or no send."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ARRAY, Text, bindparam, text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncSession

# The primary key decides: of two runs racing (a job run twice, two beats), the second waits on
# the first's rows and then inserts nothing for them.
_CLAIM_SENDS = text(
    """
    INSERT INTO recurring_sends (tenant_id, schedule, recipient, period, message_id)
    SELECT tenant_id, :schedule, recipient, period, message_id
      FROM unnest(:tenants, :recipients, :periods, :messages)
           AS v(tenant_id, recipient, period, message_id)
    ON CONFLICT DO NOTHING
    RETURNING message_id
    """
).bindparams(
    bindparam("tenants", type_=ARRAY(UUID(as_uuid=True))),
    bindparam("recipients", type_=ARRAY(Text)),
    bindparam("periods", type_=ARRAY(Text)),
    bindparam("messages", type_=ARRAY(UUID(as_uuid=True))),
)


@dataclass(frozen=True)
class PlannedSend:
    tenant_id: uuid.UUID
    recipient: str  # lower-cased address
    period: str
    message_id: uuid.UUID


class RecurringSendRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim(self, schedule: str, planned: Sequence[PlannedSend]) -> set[uuid.UUID]:
        """Record the sends no run has made yet; returns their message ids."""
        if not planned:
            return set()
        result = await self.session.execute(
            _CLAIM_SENDS,
            {
                "schedule": schedule,
                "tenants": [p.tenant_id for p in planned],
                "recipients": [p.recipient for p in planned],
                "periods": [p.period for p in planned],
                "messages": [p.message_id for p in planned],
            },
        )
        return {row.message_id for row in result}
