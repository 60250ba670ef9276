"""One try of one provider for one message; a failover writes several rows per attempt number."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Identity, Index, Integer, Text
from sqlalchemy.dialects.postgresql import TIMESTAMP, UUID
from sqlalchemy.orm import Mapped, mapped_column

from mailsvc.models.base import Base


class Attempt(Base):
    __tablename__ = "attempts"
    __table_args__ = (Index("ix_attempts_message_id", "message_id", "number"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    message_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("messages.id", ondelete="CASCADE")
    )
    number: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    finished_at: Mapped[datetime] = mapped_column(TIMESTAMP(timezone=True))
    outcome: Mapped[str] = mapped_column(Text)  # sent | transient_error | permanent_error
    error_code: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
