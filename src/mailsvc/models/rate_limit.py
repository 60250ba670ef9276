"""A rate limit set at run time, overriding the defaults in Settings without a restart."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Integer, Text, func
from sqlalchemy.dialects.postgresql import TIMESTAMP
from sqlalchemy.orm import Mapped, mapped_column

from mailsvc.models.base import Base


class RateLimit(Base):
    __tablename__ = "rate_limits"
    __table_args__ = (
        CheckConstraint("per_minute IS NULL OR per_minute > 0", name="per_minute"),
        CheckConstraint("per_second IS NULL OR per_second > 0", name="per_second"),
        CheckConstraint("burst IS NULL OR burst > 0", name="burst"),
    )

    # provider:<name> | lane:<lane> (each tenant's default) | tenant:<id>:<lane>
    # | api (every tenant's API requests) | api:tenant:<id>
    scope: Mapped[str] = mapped_column(Text, primary_key=True)
    per_minute: Mapped[int | None] = mapped_column(Integer)
    per_second: Mapped[int | None] = mapped_column(Integer)
    burst: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(
        TIMESTAMP(timezone=True), server_default=func.now()
    )
