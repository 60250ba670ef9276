"""A contact: someone a tenant mails on a schedule (birthdays, activation reminders)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Computed,
    Date,
    ForeignKey,
    Index,
    SmallInteger,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP, UUID
from sqlalchemy.orm import Mapped, mapped_column

from mailsvc.kit.ids import uuid7
from mailsvc.models.base import Base


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("tenant_id", "email"),
        # The list endpoint: newest first within a tenant.
        Index("ix_contacts_tenant_id_id", "tenant_id", text("id DESC")),
        # The birthday job: contacts born on a given month and day, in given time zones. An
        # index probe per (day, zone) pair, whatever the number of contacts.
        Index(
            "ix_contacts_birthday",
            "birth_md",
            "timezone",
            postgresql_where=text("birthday IS NOT NULL"),
        ),
        # The activation reminder: contacts signed up long enough ago and still not activated.
        Index(
            "ix_contacts_unactivated",
            "signed_up_at",
            postgresql_where=text("activated_at IS NULL AND signed_up_at IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid7)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE")
    )
    email: Mapped[str] = mapped_column(Text)  # normalised: ASCII form, lower-cased
    name: Mapped[str | None] = mapped_column(Text)
    birthday: Mapped[date | None] = mapped_column(Date)
    # month * 100 + day of the birthday (229 for Feb 29): what the birthday index is keyed on.
    birth_md: Mapped[int | None] = mapped_column(
        SmallInteger,
        Computed(
            "(EXTRACT(month FROM birthday) * 100 + EXTRACT(day FROM birthday))::smallint",
            persisted=True,
        ),
    )
    timezone: Mapped[str] = mapped_column(Text, default="UTC")  # an IANA zone name
    signed_up_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    activated_at: Mapped[datetime | None] = mapped_column(TIMESTAMP(timezone=True))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    created_at: Mapped[datetime] = mapped_column(
        TIMESTAMP(timezone=True), server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        TIMESTAMP(timezone=True), server_default=func.now()
    )
