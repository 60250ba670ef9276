"""Recurring schedules per tenant, and the ledger that makes each recurring send happen once."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Integer, Text, func
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP, UUID
from sqlalchemy.orm import Mapped, mapped_column

from mailsvc.models.base import Base

SCHEDULE_NAMES = ("birthday", "activation_reminder", "weekly_report")


class Schedule(Base):
    """A tenant's settings for one built-in recurring job. No row: the job's defaults."""

    __tablename__ = "schedules"
    __table_args__ = (
        CheckConstraint(
            "name IN (" + ", ".join(f"'{n}'" for n in SCHEDULE_NAMES) + ")", name="name"
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    cron: Mapped[str | None] = mapped_column(Text)  # "minute hour day month weekday"
    days: Mapped[int | None] = mapped_column(Integer)  # activation_reminder: days after sign-up
    timezone: Mapped[str] = mapped_column(Text, default="UTC")
    template: Mapped[str | None] = mapped_column(Text)  # None: the built-in of the same name
    recipients: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    updated_at: Mapped[datetime] = mapped_column(
        TIMESTAMP(timezone=True), server_default=func.now()
    )


class RecurringSend(Base):
    """One recurring send: its primary key is what stops a second run mailing anyone twice."""

    __tablename__ = "recurring_sends"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    schedule: Mapped[str] = mapped_column(Text, primary_key=True)
    recipient: Mapped[str] = mapped_column(Text, primary_key=True)  # lower-cased address
    period: Mapped[str] = mapped_column(Text, primary_key=True)  # "2026", "2026-W47", …
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = mapped_column(
        TIMESTAMP(timezone=True), server_default=func.now()
    )
