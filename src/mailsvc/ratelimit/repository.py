"""The rate_limits table: limits set at run time."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.config import RateLimitSpec
from mailsvc.models import RateLimit


class RateLimitRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def all(self) -> dict[str, RateLimitSpec]:
        rows = (await self.session.execute(select(RateLimit))).scalars()
        return {
            row.scope: RateLimitSpec(
                per_minute=row.per_minute, per_second=row.per_second, burst=row.burst
            )
            for row in rows
        }

    async def put(self, scope: str, spec: RateLimitSpec) -> None:
        statement = pg_insert(RateLimit).values(
            scope=scope, per_minute=spec.per_minute, per_second=spec.per_second, burst=spec.burst
        )
        await self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[RateLimit.scope],
                set_={
                    "per_minute": statement.excluded.per_minute,
                    "per_second": statement.excluded.per_second,
                    "burst": statement.excluded.burst,
                    "updated_at": statement.excluded.updated_at,
                },
            )
        )

    async def remove(self, scope: str) -> bool:
        result = await self.session.execute(delete(RateLimit).where(RateLimit.scope == scope))
        return bool(getattr(result, "rowcount", 0))
