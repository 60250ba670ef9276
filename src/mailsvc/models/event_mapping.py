"""A tenant's own mapping of a user event type to the templates it sends, in order."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Text, func
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP, UUID
from sqlalchemy.orm import Mapped, mapped_column

from mailsvc.models.base import Base


class EventMapping(Base):
    __tablename__ = "event_mappings"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    type: Mapped[str] = mapped_column(Text, primary_key=True)
    templates: Mapped[list[str]] = mapped_column(ARRAY(Text))  # sent in this order; may be empty
    priority: Mapped[str] = mapped_column(Text, default="high")
    updated_at: Mapped[datetime] = mapped_column(
        TIMESTAMP(timezone=True), server_default=func.now()
    )
